// server.mjs: an emulator of Azure Key Vault's secrets REST API, the Entra ID token endpoint and
// IMDS, with faults the tests switch on at run time (see docs/keyvault-emulator.md).
//
// One HTTPS server (Key Vault, Entra, IMDS, /_control) and one plain-HTTP server (IMDS only, as
// the real 169.254.169.254 is plain HTTP). Nothing secret is ever printed.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';

const KV_RESOURCE = 'https://vault.azure.net';
const API_VERSIONS = new Set(['7.4', '7.5', '7.6', '2025-07-01']);
const NAME_RE = /^[0-9a-zA-Z-]{1,127}$/;
const MAX_RESULTS = 25;
// The SDK (MSAL) asks for the path with a trailing slash; the real IMDS answers both.
const IMDS_PATH = /^\/metadata\/identity\/oauth2\/token\/?$/;
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

function parseArgs(argv) {
  const opts = {
    port: 0,
    imdsPort: 0,
    host: '127.0.0.1',
    tenant: '72f988bf-0000-4000-8000-00000000f00d',
    clientId: '00000000-0000-4000-8000-0000000c11e7',
    miClientId: null,
    clientSecretFile: null,
    assertionFile: null,
    authority: null,
    portFile: null,
    cert: null,
  };
  const flags = {
    '--port': (v) => (opts.port = Number(v)),
    '--imds-port': (v) => (opts.imdsPort = Number(v)),
    '--host': (v) => (opts.host = v),
    '--tenant': (v) => (opts.tenant = v),
    '--client-id': (v) => (opts.clientId = v),
    '--mi-client-id': (v) => (opts.miClientId = v),
    '--client-secret-file': (v) => (opts.clientSecretFile = v),
    '--assertion-file': (v) => (opts.assertionFile = v),
    '--authority': (v) => (opts.authority = v),
    '--port-file': (v) => (opts.portFile = v),
    '--cert': (v) => (opts.cert = v),
  };
  for (let i = 2; i < argv.length; i += 2) {
    const set = flags[argv[i]];
    if (!set || argv[i + 1] === undefined) {
      process.stderr.write(`kvemu: unknown or incomplete option ${argv[i]}\n`);
      process.exit(2);
    }
    set(argv[i + 1]);
  }
  if (!opts.cert) {
    process.stderr.write('kvemu: --cert DIR is required (server.pem, server.key)\n');
    process.exit(2);
  }
  return opts;
}

const opts = parseArgs(process.argv);
const nowS = () => Math.floor(Date.now() / 1000);
const hex = (n) => crypto.randomBytes(n).toString('hex');

// Read at each use: a test may rotate the client secret or the expected assertion on disk.
function readTrimmed(file) {
  if (!file) return null;
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return null;
  }
}

const defaultFaults = () => ({
  target: 'vault', // which requests 503/delay/drop apply to: vault, token, imds, all
  unavailable: 0, // next N matching requests get 503
  drop: 0, // next N matching requests have their connection destroyed
  delay_ms: 0, // every matching response is delayed
  throttle_writes: 0, // next N secret writes (PUT, PATCH) get 429
  throttle_requests: 0, // next N Key Vault requests of any kind get 429
  retry_after: 1, // seconds announced with a 429 (or 503)
  retry_after_header: 'Retry-After', // or retry-after-ms, x-ms-retry-after-ms
  write_limit_per_10s: 0, // > 0: writes beyond this many in a sliding 10 s window get 429
  token_lifetime_s: 3600,
  // Tests of Entra-authenticated PostgreSQL set the admin role's password to a known token:
  // tokens for this audience are then always this value.
  fixed_token: null,
  fixed_token_aud: null,
});

const state = {
  secrets: new Map(), // name -> [version, ...] in creation order
  tokens: new Map(), // token -> {aud, expiresAt, kind, tenant}
  assertions: [], // client assertions received (tests check what a workload identity sent)
  requests: [],
  writes: [], // timestamps (ms) of accepted and throttled secret writes
  writesPeak10s: 0,
  faults: defaultFaults(),
  seq: 0,
};

function json(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'x-ms-request-id': crypto.randomUUID(),
    ...headers,
  });
  res.end(text);
}

const kvError = (res, status, code, message, headers = {}, inner = null) =>
  json(res, status, { error: { code, message, ...(inner ? { innererror: { code: inner } } : {}) } }, headers);

function entraError(res, status, error, code, description) {
  json(res, status, {
    error,
    error_description: `AADSTS${code}: ${description}`,
    error_codes: [code],
    timestamp: new Date().toISOString(),
    trace_id: crypto.randomUUID(),
    correlation_id: crypto.randomUUID(),
  });
}

function retryHeaders() {
  const f = state.faults;
  if (f.retry_after_header === 'Retry-After') return { 'Retry-After': String(f.retry_after) };
  return { [f.retry_after_header]: String(Math.round(f.retry_after * 1000)) };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > 1 << 20) {
        reject(new Error('body too large'));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

// --- tokens ----------------------------------------------------------------------------------

function audienceOf(scopeOrResource) {
  return String(scopeOrResource || '')
    .replace(/\/\.default$/, '')
    .replace(/\/+$/, '');
}

function issueToken(aud, kind, tenant) {
  const f = state.faults;
  const token = f.fixed_token && aud === f.fixed_token_aud ? f.fixed_token : `kvemu.${hex(24)}`;
  const lifetime = state.faults.token_lifetime_s;
  state.tokens.set(token, { aud, kind, tenant, expiresAt: Date.now() + lifetime * 1000 });
  return { token, lifetime };
}

// Returns null when the request carries a valid Key Vault token, else the reason it does not.
function authProblem(req) {
  const h = req.headers.authorization || '';
  const m = /^Bearer\s+(\S+)$/i.exec(h);
  if (!m) return 'AKV10000: Request is missing a Bearer or PoP token.';
  const t = state.tokens.get(m[1]);
  if (!t) return 'AKV10032: Invalid issuer. The token was not issued by a trusted authority.';
  if (t.expiresAt <= Date.now()) return 'AKV10022: Token is expired.';
  if (t.aud !== KV_RESOURCE) return `AKV10022: Invalid audience. Expected ${KV_RESOURCE}, found: ${t.aud}.`;
  return null;
}

function authorityBase(req) {
  return opts.authority || `https://${req.headers.host}`;
}

// The challenge names the emulator's own authority (https://localhost:PORT unless --authority),
// as the real one names login.microsoftonline.com, whatever host the vault was reached by.
function challenge(req, res, message) {
  const authority = opts.authority || `https://localhost:${main.address().port}`;
  const www = `Bearer authorization="${authority}/${opts.tenant}", resource="${KV_RESOURCE}"`;
  kvError(res, 401, 'Unauthorized', message, { 'WWW-Authenticate': www });
}

// --- Entra ID ---------------------------------------------------------------------------------

async function entraToken(req, res, tenant, entry) {
  const form = new URLSearchParams(await readBody(req));
  if (tenant !== opts.tenant && tenant !== 'organizations' && tenant !== 'common') {
    return entraError(res, 400, 'invalid_request', 90002, `Tenant '${tenant}' not found.`);
  }
  if (form.get('grant_type') !== 'client_credentials') {
    return entraError(res, 400, 'unsupported_grant_type', 70003, 'The app requested an unsupported grant type.');
  }
  if (form.get('client_id') !== opts.clientId) {
    return entraError(res, 400, 'unauthorized_client', 700016, 'Application not found in the directory.');
  }
  const scope = (form.get('scope') || '').split(' ').find((s) => s.endsWith('/.default'));
  if (!scope) {
    return entraError(res, 400, 'invalid_scope', 1002012, 'The provided value for scope is not valid.');
  }
  const secret = form.get('client_secret');
  const assertion = form.get('client_assertion');
  if (secret !== null) {
    entry.grant = 'client_secret';
    const expected = readTrimmed(opts.clientSecretFile);
    if (!expected || secret !== expected) {
      return entraError(res, 401, 'invalid_client', 7000215, 'Invalid client secret provided.');
    }
  } else if (assertion !== null) {
    entry.grant = 'client_assertion';
    if (form.get('client_assertion_type') !== ASSERTION_TYPE || !assertion) {
      return entraError(res, 400, 'invalid_request', 50027, 'Invalid client assertion type or empty assertion.');
    }
    const expected = readTrimmed(opts.assertionFile);
    state.assertions.push({ time: Date.now(), assertion, accepted: !expected || expected === assertion });
    if (expected && expected !== assertion) {
      return entraError(res, 401, 'invalid_client', 700024, 'Client assertion is not within its valid time range or does not match.');
    }
  } else {
    return entraError(res, 401, 'invalid_client', 7000218, "The request body must contain 'client_assertion' or 'client_secret'.");
  }
  const { token, lifetime } = issueToken(audienceOf(scope), entry.grant, tenant);
  json(res, 200, { token_type: 'Bearer', expires_in: lifetime, ext_expires_in: lifetime, access_token: token });
}

function openidConfiguration(req, res, tenant) {
  const base = `${authorityBase(req)}/${tenant}`;
  json(res, 200, {
    token_endpoint: `${base}/oauth2/v2.0/token`,
    token_endpoint_auth_methods_supported: ['client_secret_post', 'private_key_jwt', 'client_secret_basic'],
    jwks_uri: `${base}/discovery/v2.0/keys`,
    response_modes_supported: ['query', 'fragment', 'form_post'],
    subject_types_supported: ['pairwise'],
    id_token_signing_alg_values_supported: ['RS256'],
    response_types_supported: ['code', 'id_token', 'code id_token', 'id_token token'],
    scopes_supported: ['openid', 'profile', 'email', 'offline_access'],
    issuer: `${base}/v2.0`,
    request_uri_parameter_supported: false,
    authorization_endpoint: `${base}/oauth2/v2.0/authorize`,
    device_authorization_endpoint: `${base}/oauth2/v2.0/devicecode`,
    end_session_endpoint: `${base}/oauth2/v2.0/logout`,
    tenant_region_scope: 'EU',
  });
}

// What MSAL asks an unknown authority host when instance discovery is on.
function instanceDiscovery(req, res) {
  const host = req.headers.host;
  json(res, 200, {
    tenant_discovery_endpoint: `https://${host}/${opts.tenant}/v2.0/.well-known/openid-configuration`,
    'api-version': '1.1',
    metadata: [{ preferred_network: host, preferred_cache: host, aliases: [host] }],
  });
}

// --- IMDS ------------------------------------------------------------------------------------

function imdsToken(req, res, url, entry) {
  if (req.headers.metadata !== 'true') {
    return json(res, 400, { error: 'invalid_request', error_description: 'Required metadata header not specified' });
  }
  if (!url.searchParams.get('api-version')) {
    return json(res, 400, { error: 'invalid_request', error_description: 'Required query variable api-version is missing' });
  }
  const resource = url.searchParams.get('resource');
  if (!resource) {
    return json(res, 400, { error: 'invalid_request', error_description: 'Required query variable resource is missing' });
  }
  const clientId = url.searchParams.get('client_id');
  const miClientId = opts.miClientId || opts.clientId;
  if (clientId && clientId !== miClientId) {
    return json(res, 400, { error: 'invalid_request', error_description: 'Identity not found' });
  }
  entry.grant = 'imds';
  const { token, lifetime } = issueToken(audienceOf(resource), 'imds', opts.tenant);
  const now = nowS();
  json(res, 200, {
    access_token: token,
    client_id: miClientId,
    expires_in: String(lifetime),
    expires_on: String(now + lifetime),
    ext_expires_in: String(lifetime),
    not_before: String(now),
    resource,
    token_type: 'Bearer',
  });
}

// --- Key Vault secrets -----------------------------------------------------------------------

const vaultBase = (req) => `https://${req.headers.host}`;

function bundle(req, name, v, withValue) {
  const b = {
    id: `${vaultBase(req)}/secrets/${name}/${v.version}`,
    attributes: { ...v.attributes },
    tags: { ...v.tags },
  };
  if (withValue) b.value = v.value;
  if (v.contentType !== undefined) b.contentType = v.contentType;
  return b;
}

function item(req, name, v, versioned) {
  const b = bundle(req, name, v, false);
  if (!versioned) b.id = `${vaultBase(req)}/secrets/${name}`;
  return b;
}

function validAttributes(a) {
  if (a === undefined || a === null) return true;
  if (typeof a !== 'object' || Array.isArray(a)) return false;
  if (a.enabled !== undefined && typeof a.enabled !== 'boolean') return false;
  for (const k of ['exp', 'nbf']) {
    if (a[k] !== undefined && a[k] !== null && !Number.isInteger(a[k])) return false;
  }
  return true;
}

function validTags(t) {
  if (t === undefined || t === null) return true;
  if (typeof t !== 'object' || Array.isArray(t) || Object.keys(t).length > 15) return false;
  return Object.entries(t).every(([k, v]) => k.length <= 512 && typeof v === 'string' && v.length <= 256);
}

function parseJson(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return undefined;
  }
}

// Real Key Vault throttles writes per vault; the peak lets a test prove rotor stays under it.
function countWrite() {
  const now = Date.now();
  state.writes = state.writes.filter((t) => t > now - 10000);
  const limit = state.faults.write_limit_per_10s;
  if (limit > 0 && state.writes.length >= limit) return false;
  state.writes.push(now);
  state.writesPeak10s = Math.max(state.writesPeak10s, state.writes.length);
  return true;
}

async function setSecret(req, res, name) {
  const body = parseJson(await readBody(req));
  if (!body || typeof body !== 'object' || typeof body.value !== 'string') {
    return kvError(res, 400, 'BadParameter', 'Property value is required and must be a string.');
  }
  if (Buffer.byteLength(body.value) > 25 * 1024) {
    return kvError(res, 400, 'BadParameter', 'Secret value exceeds 25 KB.');
  }
  if (!validAttributes(body.attributes) || !validTags(body.tags)) {
    return kvError(res, 400, 'BadParameter', 'Invalid attributes or tags.');
  }
  if (body.contentType !== undefined && typeof body.contentType !== 'string') {
    return kvError(res, 400, 'BadParameter', 'contentType must be a string.');
  }
  const a = body.attributes || {};
  const now = nowS();
  const v = {
    version: hex(16),
    value: body.value,
    contentType: body.contentType,
    tags: body.tags || {},
    attributes: {
      enabled: a.enabled !== false,
      ...(Number.isInteger(a.nbf) ? { nbf: a.nbf } : {}),
      ...(Number.isInteger(a.exp) ? { exp: a.exp } : {}),
      created: now,
      updated: now,
      recoveryLevel: 'Recoverable+Purgeable',
      recoverableDays: 90,
    },
  };
  if (!state.secrets.has(name)) state.secrets.set(name, []);
  state.secrets.get(name).push(v);
  json(res, 200, bundle(req, name, v, true));
}

function findVersion(res, name, version) {
  const versions = state.secrets.get(name);
  if (!versions || versions.length === 0) {
    kvError(res, 404, 'SecretNotFound', `A secret with (name/id) ${name} was not found in this key vault.`);
    return null;
  }
  const v = version ? versions.find((x) => x.version === version) : versions[versions.length - 1];
  if (!v) {
    kvError(res, 404, 'SecretNotFound', `A secret with (name/id) ${name}/${version} was not found in this key vault.`);
    return null;
  }
  return v;
}

// Like the real service, "latest" is the newest version even when it is disabled (then 403).
function getSecret(req, res, name, version) {
  const v = findVersion(res, name, version);
  if (!v) return;
  if (!v.attributes.enabled) {
    return kvError(res, 403, 'Forbidden', 'Operation get is not allowed on a disabled secret.', {}, 'SecretDisabled');
  }
  json(res, 200, bundle(req, name, v, true));
}

async function updateSecret(req, res, name, version) {
  const body = parseJson(await readBody(req));
  if (body === undefined || (body !== null && typeof body !== 'object')) {
    return kvError(res, 400, 'BadParameter', 'The request body is not valid JSON.');
  }
  const b = body || {};
  if (!validAttributes(b.attributes) || !validTags(b.tags)) {
    return kvError(res, 400, 'BadParameter', 'Invalid attributes or tags.');
  }
  const v = findVersion(res, name, version);
  if (!v) return;
  const a = b.attributes || {};
  if (a.enabled !== undefined) v.attributes.enabled = a.enabled;
  for (const k of ['exp', 'nbf']) {
    if (a[k] === null) delete v.attributes[k];
    else if (a[k] !== undefined) v.attributes[k] = a[k];
  }
  if (b.tags !== undefined && b.tags !== null) v.tags = b.tags;
  if (typeof b.contentType === 'string') v.contentType = b.contentType;
  v.attributes.updated = nowS();
  json(res, 200, bundle(req, name, v, false));
}

// $skiptoken is an opaque offset, as the real one is opaque to clients.
function page(req, res, url, all, basePath) {
  const max = Number(url.searchParams.get('maxresults') || MAX_RESULTS);
  if (!Number.isInteger(max) || max < 1 || max > MAX_RESULTS) {
    return kvError(res, 400, 'BadParameter', `maxresults must be between 1 and ${MAX_RESULTS}.`);
  }
  const skip = url.searchParams.get('$skiptoken');
  const start = skip ? Number(Buffer.from(skip, 'base64url').toString()) : 0;
  if (!Number.isInteger(start) || start < 0) return kvError(res, 400, 'BadParameter', 'Invalid $skiptoken.');
  const value = all.slice(start, start + max);
  let nextLink = null;
  if (start + max < all.length) {
    const q = new URLSearchParams({
      'api-version': url.searchParams.get('api-version'),
      $skiptoken: Buffer.from(String(start + max)).toString('base64url'),
      maxresults: String(max),
    });
    nextLink = `${vaultBase(req)}${basePath}?${q}`;
  }
  json(res, 200, { value, nextLink });
}

function listVersions(req, res, url, name) {
  const versions = state.secrets.get(name);
  if (!versions) {
    return kvError(res, 404, 'SecretNotFound', `A secret with (name/id) ${name} was not found in this key vault.`);
  }
  page(req, res, url, versions.map((v) => item(req, name, v, true)), `/secrets/${name}/versions`);
}

function listSecrets(req, res, url) {
  const all = [...state.secrets.entries()].map(([n, vs]) => item(req, n, vs[vs.length - 1], false));
  page(req, res, url, all, '/secrets');
}

async function vault(req, res, url, entry) {
  const problem = authProblem(req);
  if (problem) return challenge(req, res, problem);
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const apiVersion = url.searchParams.get('api-version');
  if (!apiVersion) return kvError(res, 400, 'BadParameter', 'The api-version query parameter is required.');
  if (!API_VERSIONS.has(apiVersion)) {
    return kvError(res, 400, 'BadParameter', `The specified version (${apiVersion}) is not recognized. Consider using the latest supported version (7.5).`);
  }
  if (parts[0] !== 'secrets') return kvError(res, 404, 'NotFound', 'No such route.');
  const name = parts[1];
  if (name !== undefined && !NAME_RE.test(name)) {
    return kvError(res, 400, 'BadParameter', "The request URI contains an invalid name: secret names must be 1-127 characters of 0-9, a-z, A-Z and '-'.");
  }
  const write = req.method === 'PUT' || req.method === 'PATCH';
  const f = state.faults;
  if (f.throttle_requests > 0 || (write && f.throttle_writes > 0) || (write && !countWrite())) {
    if (f.throttle_requests > 0) f.throttle_requests--;
    else if (write && f.throttle_writes > 0) f.throttle_writes--;
    entry.fault = 'throttled';
    return kvError(res, 429, 'Throttled', 'Request was not processed because too many requests were received. Reason: A maximum of 300 write requests per 10 seconds per vault is allowed.', retryHeaders());
  }
  const m = req.method;
  const n = parts.length;
  if (n === 1 && m === 'GET') return listSecrets(req, res, url);
  if (n === 2 && m === 'PUT') return setSecret(req, res, name);
  if (n === 2 && m === 'GET') return getSecret(req, res, name, null);
  if (n === 3 && parts[2] === 'versions' && m === 'GET') return listVersions(req, res, url, name);
  if (n === 3 && m === 'GET') return getSecret(req, res, name, parts[2]);
  if ((n === 2 || n === 3) && m === 'PATCH') return updateSecret(req, res, name, parts[2] || null);
  kvError(res, 405, 'BadParameter', `Method ${m} is not allowed on ${url.pathname}.`);
}

// --- control ---------------------------------------------------------------------------------

function stateView() {
  const secrets = {};
  for (const [name, vs] of state.secrets) {
    secrets[name] = vs.map((v) => ({
      version: v.version,
      value: v.value,
      contentType: v.contentType,
      tags: v.tags,
      attributes: v.attributes,
    }));
  }
  return {
    secrets,
    tokens: { issued: state.tokens.size },
    assertions: state.assertions,
    writes_peak_10s: state.writesPeak10s,
    faults: state.faults,
  };
}

async function control(req, res, url) {
  const what = url.pathname.slice('/_control/'.length);
  if (req.method === 'GET' && what === 'requests') return json(res, 200, state.requests);
  if (req.method === 'GET' && what === 'state') return json(res, 200, stateView());
  if (req.method === 'GET' && what === 'faults') return json(res, 200, state.faults);
  if (req.method === 'POST' && what === 'faults') {
    const body = parseJson(await readBody(req));
    if (!body || typeof body !== 'object') return json(res, 400, { error: 'a JSON object is required' });
    const known = defaultFaults();
    for (const [k, v] of Object.entries(body)) {
      if (k === 'expire_tokens') {
        if (v) for (const t of state.tokens.values()) t.expiresAt = Date.now();
      } else if (k === 'reset') {
        if (v) state.faults = defaultFaults();
      } else if (!(k in known) || (typeof v !== typeof known[k] &&
                                   !(known[k] === null && typeof v === 'string'))) {
        return json(res, 400, { error: `unknown fault or wrong type: ${k}` });
      } else state.faults[k] = v;
    }
    return json(res, 200, state.faults);
  }
  if (req.method === 'POST' && what === 'reset') {
    state.secrets.clear();
    state.tokens.clear();
    state.assertions = [];
    state.requests = [];
    state.writes = [];
    state.writesPeak10s = 0;
    state.faults = defaultFaults();
    return json(res, 200, {});
  }
  json(res, 404, { error: 'unknown control endpoint' });
}

// --- dispatch --------------------------------------------------------------------------------

function classify(url) {
  const p = url.pathname;
  if (p.startsWith('/_control/')) return 'control';
  if (IMDS_PATH.test(p)) return 'imds';
  if (/^\/[^/]+\/oauth2\/v2\.0\/token$/.test(p)) return 'token';
  if (/^\/[^/]+\/(v2\.0\/)?\.well-known\/openid-configuration$/.test(p)) return 'token';
  if (p === '/common/discovery/instance') return 'token';
  return 'vault';
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function handle(req, res, imdsOnly) {
  const url = new URL(req.url, `https://${req.headers.host || 'localhost'}`);
  const kind = imdsOnly ? 'imds' : classify(url);
  const entry = {
    seq: ++state.seq,
    time: Date.now(),
    method: req.method,
    path: url.pathname,
    query: Object.fromEntries(url.searchParams),
    kind,
    auth: Boolean(req.headers.authorization),
    status: null,
  };
  if (kind !== 'control') state.requests.push(entry);
  res.on('finish', () => (entry.status = res.statusCode));

  const f = state.faults;
  const hit = kind !== 'control' && (f.target === 'all' || f.target === kind);
  if (hit && f.drop > 0) {
    f.drop--;
    entry.fault = 'dropped';
    entry.status = 0;
    req.socket.destroy();
    return;
  }
  if (hit && f.delay_ms > 0) await sleep(f.delay_ms);
  if (hit && f.unavailable > 0) {
    f.unavailable--;
    entry.fault = 'unavailable';
    return kvError(res, 503, 'ServiceUnavailable', 'The service is temporarily unavailable.', retryHeaders());
  }
  if (kind === 'control') return control(req, res, url);
  if (kind === 'imds') {
    if (!IMDS_PATH.test(url.pathname)) return json(res, 404, { error: 'not_found' });
    return imdsToken(req, res, url, entry);
  }
  if (kind === 'token') {
    const parts = url.pathname.split('/').filter(Boolean);
    if (parts[0] === 'common' && parts[1] === 'discovery') return instanceDiscovery(req, res);
    if (req.method === 'GET') return openidConfiguration(req, res, parts[0]);
    if (req.method === 'POST') return entraToken(req, res, parts[0], entry);
    return json(res, 405, { error: 'method not allowed' });
  }
  return vault(req, res, url, entry);
}

function serve(imdsOnly) {
  return (req, res) =>
    handle(req, res, imdsOnly).catch((e) => {
      if (!res.headersSent) kvError(res, 500, 'InternalError', String(e.message || e));
    });
}

const tls = {
  cert: fs.readFileSync(path.join(opts.cert, 'server.pem')),
  key: fs.readFileSync(path.join(opts.cert, 'server.key')),
};
const main = https.createServer(tls, serve(false));
const imds = http.createServer(serve(true));

function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, opts.host, () => resolve(server.address().port));
  });
}

const httpsPort = await listen(main, opts.port);
const imdsPort = await listen(imds, opts.imdsPort);
if (opts.portFile) {
  // Written whole then renamed, so a reader never sees half a file.
  const tmp = `${opts.portFile}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify({ https: httpsPort, imds: imdsPort }));
  fs.renameSync(tmp, opts.portFile);
}
process.stderr.write(`kvemu: https on ${opts.host}:${httpsPort}, imds (http) on ${opts.host}:${imdsPort}\n`);
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    main.close();
    imds.close();
    main.closeAllConnections();
    imds.closeAllConnections();
    process.exit(0);
  });
}
