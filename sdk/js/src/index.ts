/**
 * `@reactor/client`: the JavaScript client of Reactor, for Node 20+ and Bun, with no
 * runtime dependencies.
 *
 * ```ts
 * import { createClient } from "@reactor/client";
 * const reactor = createClient({ url: process.env.REACTOR_URL! });
 * await reactor.auth.signInWithPassword({ email, password });
 * reactor.auth.setOrg("acme");
 * await reactor.functions.create({ name: "hello", runtime: "bun" });
 * await reactor.functions.deploy("hello", { directory: "./functions/hello" });
 * await reactor.functions.promote("hello");
 * const res = await reactor.functions.invoke("hello", { method: "POST", body: "{}" });
 * ```
 *
 * Every failure of the API is thrown as a {@link ReactorError} (code, status, message,
 * details). Access tokens are renewed with the refresh token before they expire.
 */

import { ReactorError, errorFrom, parseError } from "./errors.js";
import { pack } from "./pack.js";

export { ReactorError } from "./errors.js";
export { pack } from "./pack.js";

import type {
  CreateFunction,
  CreateUser,
  DeploymentInfo,
  EnvVarInfo,
  FunctionInfo,
  LogEntry,
  MemberInfo,
  Membership,
  OrgCreated,
  Policy as InvokePolicy,
  Role,
  SetEnv,
  TokenGranted,
  TokenRequest,
  UserInfo,
  UserRef,
} from "./api.js";

/** The API's JSON shapes, generated from the server's OpenAPI document (`src/api.ts`). */
export type * from "./api.js";

/** The signed-in user. */
export type User = UserRef;

export interface ClientOptions {
  /** The server, e.g. `http://127.0.0.1:8080`. */
  url: string;
  /** An API token (`rct_...`) instead of signing in. */
  token?: string;
  /** The org requests act in (`X-Reactor-Org`); see `auth.setOrg`. */
  org?: string;
  /** Another `fetch` (tests, proxies). */
  fetch?: typeof fetch;
}



export interface Session {
  user: User;
  orgs: Membership[];
  accessToken: string;
  refreshToken: string;
  /** Milliseconds since the epoch. */
  expiresAt: number;
  /** The access token's lifetime, in milliseconds. */
  lifetimeMs: number;
}







export interface DeployOptions {
  /** The function directory, packed as the CLI packs it. */
  directory: string;
  /** Wait until the deployment is ready (default) or failed; false returns on upload. */
  wait?: boolean;
  /** How long to wait, in milliseconds (default 300000). */
  timeoutMs?: number;
}

export interface InvokeOptions extends RequestInit {
  /** Below the function's mount: `/a/b?x=1` reaches the function as that path. */
  path?: string;
}

/** Renew an access token this long before it expires (at most half its lifetime). */
const RENEW_MARGIN_MS = 60_000;

const inspect = Symbol.for("nodejs.util.inspect.custom");


const seg = (s: string) => encodeURIComponent(s);

export class ReactorClient {
  readonly url: string;
  readonly auth: Auth;
  readonly functions: Functions;
  readonly users: Users;
  readonly orgs: Orgs;
  /** @internal */
  readonly http: Http;

  constructor(options: ClientOptions) {
    this.url = options.url.replace(/\/+$/, "");
    this.http = new Http(this.url, options.fetch ?? globalThis.fetch.bind(globalThis));
    this.http.token = options.token;
    this.http.org = options.org;
    this.auth = new Auth(this.http);
    this.functions = new Functions(this.http);
    this.users = new Users(this.http);
    this.orgs = new Orgs(this.http);
  }
}

/** A client of the server at `url`. */
export function createClient(options: ClientOptions): ReactorClient {
  return new ReactorClient(options);
}

/** The transport: credentials, org, renewal, errors. @internal */
export class Http {
  token?: string;
  org?: string;
  session?: Session;
  private renewing?: Promise<void>;

  constructor(
    readonly url: string,
    readonly fetch: typeof globalThis.fetch,
  ) {}

  async grant(body: TokenRequest): Promise<Session> {
    const res = await this.fetch(`${this.url}/fn/v1/_admin/auth/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!res.ok) throw await errorFrom(res);
    const g = (await res.json()) as TokenGranted;
    this.session = {
      user: g.user,
      orgs: g.orgs,
      accessToken: g.access_token,
      refreshToken: g.refresh_token,
      expiresAt: Date.now() + g.expires_in * 1000,
      lifetimeMs: g.expires_in * 1000,
    };
    this.token = g.access_token;
    return this.session;
  }

  /** Renews the access token now, one renewal at a time; a refused renewal (the sign-in
   * ended) forgets the sign-in. */
  renew(): Promise<void> {
    const s = this.session;
    if (!s) return Promise.resolve();
    this.renewing ??= this.grant({ grant_type: "refresh_token", refresh_token: s.refreshToken })
      .then(
        () => undefined,
        (e: unknown) => {
          if (e instanceof ReactorError && e.status === 401 && this.session === s) {
            this.session = undefined;
            this.token = undefined;
          }
          throw e;
        },
      )
      .finally(() => {
        this.renewing = undefined;
      });
    return this.renewing;
  }

  /** Waits for a renewal under way, if any. */
  async settled(): Promise<void> {
    await this.renewing?.catch(() => undefined);
  }

  /** Renews the access token when it is about to expire. */
  private async fresh(): Promise<void> {
    const s = this.session;
    if (!s) return;
    const margin = Math.min(RENEW_MARGIN_MS, s.lifetimeMs / 2);
    if (s.expiresAt - Date.now() > margin) return;
    await this.renew();
  }

  /** Never prints the tokens (`console.log(client)`, `JSON.stringify`). */
  toJSON(): Record<string, unknown> {
    return { url: this.url, org: this.org, signedIn: this.session?.user.email ?? null };
  }

  [inspect](): string {
    return `Http ${JSON.stringify(this.toJSON())}`;
  }

  /** A request with the credentials and org; the raw response. */
  async raw(path: string, init: RequestInit = {}): Promise<Response> {
    await this.fresh();
    const headers = new Headers(init.headers);
    if (this.token && !headers.has("authorization")) {
      headers.set("authorization", `Bearer ${this.token}`);
    }
    if (this.org && !headers.has("x-reactor-org")) {
      headers.set("x-reactor-org", this.org);
    }
    return this.fetch(`${this.url}${path}`, { ...init, headers });
  }

  /** An admin call: JSON in, JSON out (undefined for 204), errors thrown. */
  async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const init: RequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { "content-type": "application/json" };
    }
    const res = await this.raw(`/fn/v1/_admin${path}`, init);
    if (!res.ok) throw await errorFrom(res);
    if (res.status === 204) return undefined as T;
    return (await res.json()) as T;
  }
}

export class Auth {
  constructor(private readonly http: Http) {}

  /** Signs in; requests then carry the access token, renewed before it expires. */
  async signInWithPassword(credentials: { email: string; password: string }): Promise<Session> {
    const session = await this.http.grant({
      grant_type: "password",
      email: credentials.email,
      password: credentials.password,
    });
    if (!this.http.org && session.orgs.length === 1) {
      this.http.org = session.orgs[0].org;
    }
    return session;
  }

  /** The org requests act in (`X-Reactor-Org`). */
  setOrg(org: string): void {
    this.http.org = org;
  }

  /** Uses an API token (`rct_...`) instead of a sign-in. */
  setToken(token: string): void {
    this.http.session = undefined;
    this.http.token = token;
  }

  /** The current sign-in, if any. */
  getSession(): Session | undefined {
    return this.http.session;
  }

  /** Renews the access token now (a new refresh token replaces the old one). */
  async refreshSession(): Promise<Session> {
    if (!this.http.session) throw new ReactorError("unauthorized", 401, "not signed in");
    await this.http.renew();
    const s = this.http.session;
    if (!s) throw new ReactorError("unauthorized", 401, "the sign-in ended");
    return s;
  }

  /** Ends the sign-in on the server and forgets it here. */
  async signOut(): Promise<void> {
    // A renewal under way would bring the sign-in back, with a token not yet revoked.
    await this.http.settled();
    const s = this.http.session;
    this.http.session = undefined;
    this.http.token = undefined;
    if (!s) return;
    const res = await this.http.fetch(`${this.http.url}/fn/v1/_admin/auth/revoke`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ refresh_token: s.refreshToken }),
    });
    if (!res.ok) throw await errorFrom(res);
  }
}

export class Functions {
  readonly deployments: Deployments;
  readonly env: Env;
  readonly policy: Policies;

  constructor(private readonly http: Http) {
    this.deployments = new Deployments(http);
    this.env = new Env(http);
    this.policy = new Policies(http);
  }

  create(fn: CreateFunction): Promise<FunctionInfo> {
    return this.http.json("POST", "/functions", fn);
  }

  list(): Promise<FunctionInfo[]> {
    return this.http.json("GET", "/functions");
  }

  get(name: string): Promise<FunctionInfo> {
    return this.http.json("GET", `/functions/${seg(name)}`);
  }

  delete(name: string): Promise<void> {
    return this.http.json("DELETE", `/functions/${seg(name)}`);
  }

  /**
   * Packs `directory` as the CLI does, uploads it with its SHA-256 and (unless `wait` is
   * false) waits until it is ready; a failed build is thrown as `deployment_failed`.
   */
  async deploy(name: string, options: DeployOptions): Promise<DeploymentInfo> {
    const packed = await pack(options.directory);
    const res = await this.http.raw(`/fn/v1/_admin/functions/${seg(name)}/deployments`, {
      method: "POST",
      headers: {
        "content-type": "application/gzip",
        "x-reactor-bundle-sha256": packed.sha256,
      },
      body: packed.bytes,
    });
    if (!res.ok) throw await errorFrom(res);
    let d = (await res.json()) as DeploymentInfo;
    if (options.wait === false) return d;
    const deadline = Date.now() + (options.timeoutMs ?? 300_000);
    let delay = 100;
    while (d.status === "materializing") {
      if (Date.now() > deadline) {
        throw new ReactorError(
          "deadline_exceeded",
          0,
          `deployment ${d.id} is still materializing`,
          { deployment_id: d.id },
        );
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 1000);
      d = await this.deployments.get(name, d.id);
    }
    if (d.status === "failed") {
      throw new ReactorError("deployment_failed", 422, d.error ?? "the deployment failed", {
        deployment_id: d.id,
        function: name,
      });
    }
    return d;
  }

  /** Makes a deployment live: `deploymentId`, else the newest. */
  promote(
    name: string,
    options: { deploymentId?: string; force?: boolean } = {},
  ): Promise<DeploymentInfo> {
    return this.http.json("POST", `/functions/${seg(name)}/promote`, {
      deployment_id: options.deploymentId,
      ...(options.force ? { force: true } : {}),
    });
  }

  /** Goes back to `toDeploymentId`, else to the ready deployment before the live one. */
  async rollback(name: string, options: { toDeploymentId?: string } = {}): Promise<DeploymentInfo> {
    let to = options.toDeploymentId;
    if (!to) {
      const list = await this.deployments.list(name);
      const live = list.findIndex((d) => d.live);
      to = list.slice(live + 1).find((d) => d.status === "ready")?.id;
      if (live < 0 || !to) {
        throw new ReactorError(
          "deployment_not_found",
          404,
          `${name} has no ready deployment before its live one to roll back to`,
        );
      }
    }
    return this.http.json("POST", `/functions/${seg(name)}/rollback`, { to_deployment_id: to });
  }

  /**
   * Invokes a function: the standard `Response`, its body streamed as it comes. A refusal
   * by the platform (unknown function, capacity, policy, ...) is thrown as a ReactorError;
   * an error status the function itself answered is returned.
   */
  async invoke(name: string, options: InvokeOptions = {}): Promise<Response> {
    const { path, ...init } = options;
    const sub = path ? (path.startsWith("/") ? path : `/${path}`) : "";
    const res = await this.http.raw(`/fn/v1/${seg(name)}${sub}`, init);
    // The platform marks its own refusals and failures with `X-Reactor-Error`.
    if (res.ok || !res.headers.has("x-reactor-error")) {
      return res;
    }
    const body = await res.json().catch(() => undefined);
    throw (
      parseError(res.status, body, res.headers.get("x-request-id") ?? undefined) ??
      new ReactorError(res.headers.get("x-reactor-error") ?? "http_error", res.status, `HTTP ${res.status}`)
    );
  }

  /**
   * The function's logs (output, invocations, platform events) from `since` (`10m`, or an
   * RFC 3339 time), then, unless `follow` is false, new ones as they come, until the
   * iteration stops or `signal` aborts.
   */
  async *logs(
    name: string,
    options: { follow?: boolean; since?: string; signal?: AbortSignal } = {},
  ): AsyncGenerator<LogEntry> {
    const q = new URLSearchParams();
    if (options.follow === false) q.set("follow", "false");
    if (options.since) q.set("since", options.since);
    const query = q.toString() ? `?${q}` : "";
    const res = await this.http.raw(`/fn/v1/_admin/functions/${seg(name)}/logs${query}`, {
      headers: { accept: "text/event-stream" },
      signal: options.signal,
    });
    if (!res.ok) throw await errorFrom(res);
    if (!res.body) return;
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value.replace(/\r\n?/g, "\n");
        let end: number;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const lines = event.split("\n");
          const kind = lines.find((l) => l.startsWith("event:"))?.slice(6).trim();
          const data = lines
            .filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).replace(/^ /, ""))
            .join("\n");
          if (kind === "log" && data) yield JSON.parse(data) as LogEntry;
        }
      }
    } finally {
      // Stops the stream (and the request) when the caller stops iterating.
      await reader.cancel().catch(() => undefined);
    }
  }
}

export class Deployments {
  constructor(private readonly http: Http) {}

  /** Newest first. */
  list(name: string): Promise<DeploymentInfo[]> {
    return this.http.json("GET", `/functions/${seg(name)}/deployments`);
  }

  get(name: string, id: string): Promise<DeploymentInfo> {
    return this.http.json("GET", `/functions/${seg(name)}/deployments/${seg(id)}`);
  }
}

export class Env {
  constructor(private readonly http: Http) {}

  /** Sets a value; `secret: true` encrypts it at rest and never returns it. */
  set(name: string, key: string, options: SetEnv): Promise<EnvVarInfo> {
    return this.http.json("PUT", `/functions/${seg(name)}/env/${seg(key)}`, {
      value: options.value,
      secret: options.secret ?? false,
    });
  }

  list(name: string): Promise<EnvVarInfo[]> {
    return this.http.json("GET", `/functions/${seg(name)}/env`);
  }

  unset(name: string, key: string): Promise<void> {
    return this.http.json("DELETE", `/functions/${seg(name)}/env/${seg(key)}`);
  }
}

/** A function's invoke policy. */
export class Policies {
  constructor(private readonly http: Http) {}

  get(name: string): Promise<InvokePolicy> {
    return this.http.json("GET", `/functions/${seg(name)}/policy`);
  }

  set(name: string, policy: InvokePolicy): Promise<InvokePolicy> {
    return this.http.json("PUT", `/functions/${seg(name)}/policy`, policy);
  }

  clear(name: string): Promise<void> {
    return this.http.json("DELETE", `/functions/${seg(name)}/policy`);
  }
}

/** Users who sign in (admins of the platform org). */
export class Users {
  constructor(private readonly http: Http) {}

  create(user: CreateUser): Promise<UserInfo> {
    return this.http.json("POST", "/users", user);
  }

  list(): Promise<UserInfo[]> {
    return this.http.json("GET", "/users");
  }

  delete(email: string): Promise<void> {
    return this.http.json("DELETE", `/users/${seg(email)}`);
  }
}

export class Orgs {
  readonly members: Members;

  constructor(private readonly http: Http) {
    this.members = new Members(http);
  }

  /** Creates an org (admins of the platform org); the answer holds its admin token. */
  create(name: string): Promise<OrgCreated> {
    return this.http.json("POST", "/orgs", { name });
  }
}

export class Members {
  constructor(private readonly http: Http) {}

  list(org: string): Promise<MemberInfo[]> {
    return this.http.json("GET", `/orgs/${seg(org)}/members`);
  }

  set(org: string, email: string, role: Role): Promise<MemberInfo> {
    return this.http.json("PUT", `/orgs/${seg(org)}/members/${seg(email)}`, { role });
  }

  remove(org: string, email: string): Promise<void> {
    return this.http.json("DELETE", `/orgs/${seg(org)}/members/${seg(email)}`);
  }
}
