// sdk_set.mjs: writes one secret version with the official Azure SDK for JavaScript
// (@azure/keyvault-secrets, ClientSecretCredential), so rotor's end-to-end tests can check that
// rotor reads and retires what the SDK writes.
//
// Usage: node sdk_set.mjs CONFIG.json
// CONFIG: {vault_url, authority_host, ca_file, tenant, client_id, client_secret_file, name,
//          value_file, tags?, expires_in_s?}. The value is read from value_file so that it never
//          appears in a command line. Prints {id, version, tags, contentType, exp} (no value) on
//          stdout; exit status 0 when the SDK wrote it.
import dns from 'node:dns';
import fs from 'node:fs';
import https from 'node:https';

const [configPath] = process.argv.slice(2);
if (!configPath) {
  process.stderr.write('usage: node sdk_set.mjs CONFIG.json\n');
  process.exit(2);
}
const cfg = JSON.parse(fs.readFileSync(configPath, 'utf8'));
const { SecretClient } = await import('@azure/keyvault-secrets');
const { ClientSecretCredential } = await import('@azure/identity');
const { createDefaultHttpClient } = await import('@azure/core-rest-pipeline');

// Pins *.vault.azure.net and localhost to the emulator, as sdk_check.mjs does, so the SDK's own
// challenge-resource and certificate checks run unchanged.
const pinned = (host) => host === 'localhost' || host.endsWith('.vault.azure.net');
const agent = new https.Agent({
  ca: fs.readFileSync(cfg.ca_file),
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

const clientSecret = fs.readFileSync(cfg.client_secret_file, 'utf8').trim();
const credential = new ClientSecretCredential(cfg.tenant, cfg.client_id, clientSecret, {
  httpClient,
  authorityHost: cfg.authority_host,
  disableInstanceDiscovery: true,
});
const client = new SecretClient(cfg.vault_url, credential, { httpClient });
const value = fs.readFileSync(cfg.value_file, 'utf8');
const options = { tags: cfg.tags || {} };
if (cfg.expires_in_s) {
  options.expiresOn = new Date((Math.floor(Date.now() / 1000) + cfg.expires_in_s) * 1000);
}
try {
  const s = await client.setSecret(cfg.name, value, options);
  if (s.value !== value) throw new Error('the SDK returned another value than it wrote');
  const p = s.properties;
  process.stdout.write(JSON.stringify({
    id: p.id,
    version: p.version,
    tags: p.tags || {},
    contentType: p.contentType ?? null,
    exp: p.expiresOn ? Math.floor(p.expiresOn.getTime() / 1000) : null,
  }) + '\n');
} catch (e) {
  process.stderr.write(`sdk_set: ${e && e.message ? e.message : e}\n`);
  process.exit(1);
}
