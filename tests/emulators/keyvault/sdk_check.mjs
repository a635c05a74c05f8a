// sdk_check.mjs: checks the Key Vault emulator with the official Azure SDK for JavaScript
// (@azure/keyvault-secrets, @azure/identity) and writes what the SDK wrote to a JSON file.
//
// Usage: node sdk_check.mjs CONFIG.json OUT.json
// CONFIG: {vault_url, authority_host, imds_endpoint, control_url, ca_file, tenant, client_id,
//          client_secret_file, federated_token_file, rotor_written: {name, version, value, tags,
//          contentType}}. Exit status 0 when every check passed; one line per check on stdout.
import assert from 'node:assert/strict';
import dns from 'node:dns';
import fs from 'node:fs';
import https from 'node:https';
import crypto from 'node:crypto';

const [configPath, outPath] = process.argv.slice(2);
if (!configPath || !outPath) {
  process.stderr.write('usage: node sdk_check.mjs CONFIG.json OUT.json\n');
  process.exit(2);
}
const cfg = JSON.parse(fs.readFileSync(configPath, 'utf8'));

// The managed identity source is chosen from the environment when the credential is built, so
// the IMDS override must be in place before @azure/identity is loaded.
process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = cfg.imds_endpoint;
const { SecretClient } = await import('@azure/keyvault-secrets');
const { ClientSecretCredential, ManagedIdentityCredential, WorkloadIdentityCredential } = await import('@azure/identity');
const { createDefaultHttpClient } = await import('@azure/core-rest-pipeline');

// Pins *.vault.azure.net and localhost to the emulator (as rotor does with CURLOPT_RESOLVE) so
// that the SDK's real challenge-resource verification and certificate checks run unchanged.
const pinned = (host) => host === 'localhost' || host.endsWith('.vault.azure.net');
const agent = new https.Agent({
  ca: fs.readFileSync(cfg.ca_file),
  keepAlive: true,
  lookup(host, options, cb) {
    if (!pinned(host)) return dns.lookup(host, options, cb);
    if (options && options.all) return cb(null, [{ address: '127.0.0.1', family: 4 }]);
    return cb(null, '127.0.0.1', 4);
  },
});
const base = createDefaultHttpClient();
const httpClient = {
  sendRequest(request) {
    if (request.url.startsWith('https:')) request.agent = agent;
    return base.sendRequest(request);
  },
};

async function control(method, what, body) {
  const url = new URL(`${cfg.control_url}/${what}`);
  const res = await new Promise((resolve, reject) => {
    const req = https.request(url, { method, agent, headers: { 'Content-Type': 'application/json' } }, resolve);
    req.on('error', reject);
    req.end(body ? JSON.stringify(body) : undefined);
  });
  const chunks = [];
  for await (const c of res) chunks.push(c);
  assert.equal(res.statusCode, 200, `control ${what}`);
  return JSON.parse(Buffer.concat(chunks).toString());
}

const requestsSince = async (seq) => (await control('GET', 'requests')).filter((r) => r.seq > seq);
const lastSeq = async () => (await control('GET', 'requests')).reduce((m, r) => Math.max(m, r.seq), 0);

const common = { httpClient, authorityHost: cfg.authority_host, disableInstanceDiscovery: true };
const clientSecret = fs.readFileSync(cfg.client_secret_file, 'utf8').trim();
const secretCred = new ClientSecretCredential(cfg.tenant, cfg.client_id, clientSecret, common);
const client = new SecretClient(cfg.vault_url, secretCred, { httpClient, serviceVersion: '7.5' });

const out = {};
let failed = 0;
async function check(name, fn) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

const sdkName = 'sdk-written';
const sdkValue = crypto.randomBytes(18).toString('base64url');
const expiresOn = new Date((Math.floor(Date.now() / 1000) + 86400) * 1000);
const sdkTags = { rotation: 'sdk-check', slot: 'green', role: 'app_green', 'managed-by': 'sdk' };

await check('challenge: first request unauthenticated, then retried with a token', async () => {
  const seq = await lastSeq();
  // contentType is passed as documented, but SDK 4.11 drops it from the request body
  // (Azure/azure-sdk-for-js#38300), so what was stored is reported rather than asserted.
  const s = await client.setSecret(sdkName, sdkValue, { tags: sdkTags, expiresOn, contentType: 'text/plain' });
  assert.equal(s.value, sdkValue);
  assert.deepEqual(s.properties.tags, sdkTags);
  assert.equal(s.properties.expiresOn.getTime(), expiresOn.getTime());
  assert.match(s.properties.version, /^[0-9a-f]{32}$/);
  const log = await requestsSince(seq);
  const puts = log.filter((r) => r.kind === 'vault' && r.method === 'PUT');
  assert.equal(puts.length, 2, 'one challenged PUT, one authorized PUT');
  assert.deepEqual([puts[0].auth, puts[0].status], [false, 401]);
  assert.deepEqual([puts[1].auth, puts[1].status], [true, 200]);
  assert.ok(log.some((r) => r.kind === 'token' && r.grant === 'client_secret' && r.status === 200));
  out.sdk_written = {
    name: sdkName,
    id: s.properties.id,
    version: s.properties.version,
    value: sdkValue,
    tags: sdkTags,
    contentType: s.properties.contentType ?? null,
    exp: Math.floor(expiresOn.getTime() / 1000),
  };
});

await check('get latest and by version', async () => {
  const latest = await client.getSecret(sdkName);
  assert.equal(latest.value, sdkValue);
  assert.equal(latest.properties.version, out.sdk_written.version);
  const byVersion = await client.getSecret(sdkName, { version: out.sdk_written.version });
  assert.equal(byVersion.value, sdkValue);
});

await check('missing secret is a 404 SecretNotFound', async () => {
  await assert.rejects(client.getSecret('no-such-secret'), (e) => e.statusCode === 404 && e.code === 'SecretNotFound');
});

const pagedName = 'sdk-paged';
const pagedVersions = [];
await check('list versions pages through more than 25 versions', async () => {
  for (let i = 0; i < 30; i++) {
    pagedVersions.push((await client.setSecret(pagedName, `v${i}`)).properties.version);
  }
  const seq = await lastSeq();
  const listed = [];
  for await (const p of client.listPropertiesOfSecretVersions(pagedName)) listed.push(p.version);
  assert.deepEqual([...listed].sort(), [...pagedVersions].sort());
  const pages = (await requestsSince(seq)).filter((r) => r.path === `/secrets/${pagedName}/versions`);
  assert.ok(pages.length >= 2, `expected several pages, got ${pages.length}`);
  assert.ok(pages.some((r) => r.query.$skiptoken), 'a nextLink was followed');
});

await check('disable a version; reading it is 403 Forbidden; others still readable', async () => {
  const victim = pagedVersions[3];
  const p = await client.updateSecretProperties(pagedName, victim, { enabled: false, tags: { retired: 'yes' } });
  assert.equal(p.enabled, false);
  assert.deepEqual(p.tags, { retired: 'yes' });
  await assert.rejects(
    client.getSecret(pagedName, { version: victim }),
    (e) => e.statusCode === 403 && e.code === 'Forbidden' && /disabled/.test(e.message),
  );
  const other = await client.getSecret(pagedName, { version: pagedVersions[4] });
  assert.equal(other.value, 'v4');
});

await check('429 with Retry-After is retried after the announced delay', async () => {
  await control('POST', 'faults', { throttle_writes: 2, retry_after: 1 });
  const seq = await lastSeq();
  const t0 = Date.now();
  const s = await client.setSecret('sdk-throttled', 'after-throttle');
  const elapsed = Date.now() - t0;
  assert.equal(s.value, 'after-throttle');
  const puts = (await requestsSince(seq)).filter((r) => r.path === '/secrets/sdk-throttled');
  assert.deepEqual(puts.map((r) => r.status), [429, 429, 200]);
  assert.ok(elapsed >= 1900, `retried after ${elapsed} ms, Retry-After said 1 s twice`);
});

await check('503 is retried', async () => {
  await control('POST', 'faults', { unavailable: 1, retry_after: 0 });
  const s = await client.getSecret(sdkName);
  assert.equal(s.value, sdkValue);
  await control('POST', 'faults', { reset: true });
});

await check('reverse: the SDK reads a version written the way rotor writes it', async () => {
  const w = cfg.rotor_written;
  const s = await client.getSecret(w.name, { version: w.version });
  assert.equal(s.value, w.value);
  assert.equal(s.properties.contentType, w.contentType);
  assert.deepEqual(s.properties.tags, w.tags);
  assert.equal(s.properties.version, w.version);
  out.sdk_read = { name: w.name, version: w.version, tags: s.properties.tags };
});

await check('managed identity through IMDS', async () => {
  const cred = new ManagedIdentityCredential({ clientId: cfg.client_id, httpClient });
  const mi = new SecretClient(cfg.vault_url, cred, { httpClient });
  const seq = await lastSeq();
  assert.equal((await mi.getSecret(sdkName)).value, sdkValue);
  const imds = (await requestsSince(seq)).filter((r) => r.kind === 'imds');
  assert.ok(imds.some((r) => r.status === 200 && r.query.resource && r.query.client_id === cfg.client_id));
});

await check('workload identity: federated token exchanged as a client assertion', async () => {
  const cred = new WorkloadIdentityCredential({
    tenantId: cfg.tenant,
    clientId: cfg.client_id,
    tokenFilePath: cfg.federated_token_file,
    ...common,
  });
  const wi = new SecretClient(cfg.vault_url, cred, { httpClient });
  const seq = await lastSeq();
  assert.equal((await wi.getSecret(sdkName)).value, sdkValue);
  assert.ok((await requestsSince(seq)).some((r) => r.grant === 'client_assertion' && r.status === 200));
  const state = await control('GET', 'state');
  const expected = fs.readFileSync(cfg.federated_token_file, 'utf8').trim();
  assert.ok(state.assertions.some((a) => a.assertion === expected && a.accepted));
});

await check('a wrong client secret is refused by the token endpoint', async () => {
  const bad = new ClientSecretCredential(cfg.tenant, cfg.client_id, 'not-the-secret', common);
  await assert.rejects(bad.getToken('https://vault.azure.net/.default'), /7000215/);
});

fs.writeFileSync(outPath, JSON.stringify(out, null, 2));
agent.destroy();
console.log(failed ? `${failed} check(s) failed` : 'all checks passed');
process.exit(failed ? 1 : 0);
