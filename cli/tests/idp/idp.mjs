// A real OpenID Provider for the single sign-on tests: `oidc-provider` (certified) on a loopback
// port, with its development login form (any login; the password is not checked), one
// confidential client (Switchboard) and accounts whose `groups` claim the test sets.
//
// Usage: node idp.mjs  (env: IDP_PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, POST_LOGOUT_URI,
// TOOLS = the node_modules folder oidc-provider and jose are installed in). Prints one line,
// `ready <issuer>`, once it listens.
//
// Test-only controls (this harness's, not the provider's), POST with a JSON body:
//   /test/groups   {"login": "ann", "groups": ["support"]}   what the account's groups claim says
//   /test/tamper   {"mode": "signature" | "nonce" | null}     how the next code exchange's ID
//                  token is spoiled: a changed claim under the old signature, or a `nonce` that
//                  was never sent, correctly signed
//   /test/rotate   {}                                         a new signing key (new `kid`); the
//                  old one is gone from the JWKS, as after a key rotation
import http from "node:http";
import path from "node:path";
import { pathToFileURL } from "node:url";

const tools = process.env.TOOLS;
const load = (name, file) => import(pathToFileURL(path.join(tools, name, file)).href);
const { default: Provider } = await load("oidc-provider", "lib/index.js");
const jose = await load("jose", "dist/webapi/index.js");

const port = Number(process.env.IDP_PORT);
const issuer = `http://127.0.0.1:${port}`;
const groups = new Map();
let tamper = null;
let generation = 0;

async function signingKey() {
  generation += 1;
  const { privateKey } = await jose.generateKeyPair("RS256", { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  return { ...jwk, kid: `key-${generation}`, alg: "RS256", use: "sig" };
}

async function provider(key) {
  const p = new Provider(issuer, {
    clients: [
      {
        client_id: process.env.CLIENT_ID,
        client_secret: process.env.CLIENT_SECRET,
        redirect_uris: [process.env.REDIRECT_URI],
        post_logout_redirect_uris: [process.env.POST_LOGOUT_URI],
        grant_types: ["authorization_code", "refresh_token"],
        response_types: ["code"],
      },
    ],
    jwks: { keys: [key] },
    cookies: { keys: ["idp-test-cookie-key"] },
    claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"], groups: ["groups"] },
    // Claims the scopes grant go into the ID token itself (what Switchboard reads).
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
    pkce: { required: () => true },
    // Switchboard is a first-party client: no consent screen, and a refresh token without
    // offline_access (it expires with the IdP session).
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed("refresh_token"),
    async loadExistingGrant(ctx) {
      const id = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (id) return ctx.oidc.provider.Grant.find(id);
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope("openid email profile groups");
      await grant.save();
      return grant;
    },
    async findAccount(_ctx, id) {
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: `${id}@idp.example.com`,
            email_verified: true,
            name: id.charAt(0).toUpperCase() + id.slice(1),
            groups: groups.get(id) ?? [],
          };
        },
      };
    },
    ttl: { Session: 3600, Interaction: 600, Grant: 3600, AuthorizationCode: 60, AccessToken: 600, IdToken: 600, RefreshToken: 3600 },
  });
  p.proxy = false;
  // The spoiled token responses of /test/tamper.
  p.use(async (ctx, next) => {
    await next();
    // Only a sign-in's code exchange is spoiled (open sessions refresh meanwhile).
    if (ctx.path !== "/token" || !tamper || ctx.oidc?.params?.grant_type !== "authorization_code") return;
    if (!ctx.body || typeof ctx.body.id_token !== "string") return;
    const mode = tamper;
    tamper = null;
    const [h, payload, s] = ctx.body.id_token.split(".");
    const claims = JSON.parse(Buffer.from(payload, "base64url").toString());
    if (mode === "signature") {
      claims.groups = ["admins-forged"];
      ctx.body = { ...ctx.body, id_token: `${h}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.${s}` };
    } else if (mode === "nonce") {
      claims.nonce = "a-nonce-never-sent";
      const pk = await jose.importJWK(current.key, "RS256");
      const jwt = await new jose.SignJWT(claims).setProtectedHeader({ alg: "RS256", kid: current.key.kid, typ: "JWT" }).sign(pk);
      ctx.body = { ...ctx.body, id_token: jwt };
    }
  });
  return p;
}

const current = { key: await signingKey() };
current.provider = await provider(current.key);

async function body(req) {
  let raw = "";
  for await (const chunk of req) raw += chunk;
  return raw ? JSON.parse(raw) : {};
}

const server = http.createServer(async (req, res) => {
  if (req.url.startsWith("/test/") && req.method === "POST") {
    try {
      const b = await body(req);
      if (req.url === "/test/groups") groups.set(b.login, b.groups);
      else if (req.url === "/test/tamper") tamper = b.mode ?? null;
      else if (req.url === "/test/rotate") {
        current.key = await signingKey();
        current.provider = await provider(current.key);
      } else {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(204).end();
    } catch (e) {
      res.writeHead(400, { "content-type": "text/plain" }).end(String(e));
    }
    return;
  }
  current.provider.callback()(req, res);
});
server.listen(port, "127.0.0.1", () => console.log(`ready ${issuer}`));
