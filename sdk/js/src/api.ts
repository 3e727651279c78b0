// Generated from Reactor's OpenAPI document by scripts/api-types.mjs: do not edit.
// Regenerate with: node scripts/api-types.mjs http://127.0.0.1:8080/fn/v1/_admin/openapi.json
// (OpenAPI 3.1.0, API v1)

/** `PUT /fn/v1/_admin/contracts/{name}/binding`. */
export interface BindContract {
  /** Bind even when the function's live deployment breaks the contract. */
  force?: boolean;
  function: string;
}

/**
 * The declared call graph from a function, as its callers' manifests declare it:
 * `depth` functions in its deepest chain that repeats none (1: it calls nothing), `path`
 * their names, the function first; `cycle` when a chain can come back to a function
 * already in it (the calls may then recurse until `functions.calls.max_depth`).
 */
export interface CallGraph {
  cycle?: string[] | null;
  depth: number;
  path: string[];
}

/** A named contract as the admin API shows it. */
export interface ContractInfo {
  created_at: string;
  description?: string | null;
  /** The function that implements it in this org, when bound. */
  function?: string | null;
  input?: unknown;
  name: string;
  org: string;
  output?: unknown;
  validate_output: boolean;
}

/** `POST /fn/v1/_admin/contracts`: a named contract (immutable once created). */
export interface CreateContract {
  description?: string | null;
  input?: unknown;
  /** `NAME@VERSION`. */
  name: string;
  output?: unknown;
  /** Validate the answers of calls made through the contract. */
  validate_output?: boolean;
}

export interface CreateFunction {
  name: string;
  runtime: Runtime;
}

export interface CreateOrg {
  name: string;
}

export interface CreateToken {
  name?: string | null;
  role: Role;
}

/** `POST /fn/v1/_admin/users`. */
export interface CreateUser {
  email: string;
  password: string;
}

export interface DeploymentInfo {
  /**
   * On the upload's answer: the deepest chain of calls the deployment can start, as
   * the manifests' `calls` declare them.
   */
  call_graph?: CallGraph | null;
  created_at: string;
  entrypoint: string;
  error?: string | null;
  function: string;
  id: string;
  live: boolean;
  memory_mb: number;
  sha256: string;
  size_bytes: number;
  status: DeploymentStatus;
  timeout_ms: number;
}

export type DeploymentStatus = "materializing" | "ready" | "failed";

/** Allow or deny. */
export type Effect = "allow" | "deny";

/** One env key of a function as the admin API shows it: a secret's value never. */
export interface EnvVarInfo {
  key: string;
  secret: boolean;
  updated_at: string;
  /** Plain values only. */
  value?: string | null;
}

/**
 * The body of every platform error; the response also names the code in
 * `X-Reactor-Error`. (`ApiError::to_body` writes it.)
 */
export interface ErrorBody {
  error: ErrorObject;
}

export type ErrorCode = "unauthorized" | "forbidden" | "function_not_found" | "deployment_not_found" | "org_not_found" | "token_not_found" | "user_not_found" | "function_exists" | "org_exists" | "user_exists" | "invalid_input" | "manifest_invalid" | "bundle_too_large" | "payload_too_large" | "deployment_not_ready" | "function_timeout" | "too_many_requests" | "function_crashed" | "policy_denied" | "worker_unavailable" | "no_worker_available" | "runtime_disabled" | "not_found" | "method_not_allowed" | "quota_exceeded" | "call_depth_exceeded" | "call_not_allowed" | "deadline_exceeded" | "circuit_open" | "invalid_output" | "internal";

/** A platform error: its code, a message for people, and details for programs. */
export interface ErrorObject {
  code: ErrorCode;
  /**
   * What the code's documentation says it carries (`retry_after_secs`, `pool_limit`,
   * JSON pointers of `invalid_input`, ...), and `request_id`.
   */
  details: Record<string, unknown>;
  message: string;
}

export interface FunctionInfo {
  created_at: string;
  live_deployment_id: string | null;
  name: string;
  org: string;
  runtime: Runtime;
}

/** UTC hours `from <= hour < to`, 0 to 24; wraps midnight when `from > to` (22 to 6). */
export interface Hours {
  from: number;
  to: number;
}

/** One log entry of one function. */
export interface LogEntry {
  cold_start?: boolean | null;
  deployment_id?: string | null;
  duration_ms?: number | null;
  function: string;
  kind: LogKind;
  message: string;
  org: string;
  /** Invocation fields, set only when `kind` is `invocation`. */
  request_id?: string | null;
  status?: number | null;
  /** When it happened: RFC 3339 UTC with milliseconds, e.g. `2026-11-30T21:10:35.123Z`. */
  ts: string;
}

export type LogKind = "stdout" | "stderr" | "event" | "invocation";

export interface MemberInfo {
  created_at: string;
  email: string;
  org: string;
  role: Role;
  user_id: string;
}

/** A user's role in one org. */
export interface Membership {
  org: string;
  role: Role;
}

/** An org just created, with the admin token that manages it (shown once). */
export interface OrgCreated {
  admin_token: TokenCreated;
  created_at: string;
  name: string;
}

/** A function's invoke policy, as stored and sent as JSON. */
export interface Policy {
  /** What happens when no rule matches. */
  default?: Effect;
  /** Checked in order; the first rule that matches decides. */
  rules?: Rule[];
}

export interface PromoteRequest {
  deployment_id?: string | null;
  /**
   * Promote even when the deployment's schemas break a contract its function is bound
   * to.
   */
  force?: boolean;
}

/** `POST /fn/v1/_admin/auth/revoke`: ends the sign-in of a refresh token. */
export interface RevokeRefresh {
  refresh_token: string;
}

export type Role = "admin" | "developer" | "invoker";

export interface RollbackRequest {
  to_deployment_id: string;
}

/** One rule: its conditions (all must match; an absent one matches everything) and its effect. */
export interface Rule {
  /** UTC weekdays, `mon`..`sun`, case-insensitive; read lower-case. */
  days?: string[];
  effect: Effect;
  /** A UTC hour window. */
  hours?: Hours | null;
  /** HTTP methods, case-insensitive; read upper-case. */
  methods?: string[];
  /** 1 to 64 characters of `[A-Za-z0-9_.-]`, unique in the policy (`default` is reserved). */
  name: string;
  /** Globs on the request path; the rule matches when any of them does. */
  paths?: string[];
  /** A CEL expression over `request` that must be true. */
  when?: string | null;
}

export type Runtime = "wasm" | "bun" | "lambda";

/** `PUT .../functions/{name}/env/{KEY}`. */
export interface SetEnv {
  secret?: boolean;
  value: string;
}

/** `PUT /fn/v1/_admin/orgs/{org}/members/{email}`. */
export interface SetMember {
  role: Role;
}

/** A token just created: the secret appears here and nowhere else, ever. */
export interface TokenCreated {
  id: string;
  name: string | null;
  org: string;
  role: Role;
  token: string;
}

/** The token endpoint's answer (the shape of OAuth 2's, plus who signed in). */
export interface TokenGranted {
  /** `Authorization: Bearer <access_token>` on the admin and invoke APIs. */
  access_token: string;
  /** Seconds the access token is valid for. */
  expires_in: number;
  /** The orgs the user may pick with `X-Reactor-Org`. */
  orgs: Membership[];
  refresh_expires_in: number;
  /** Spent by the next refresh grant, which returns another. */
  refresh_token: string;
  /** Always `bearer`. */
  token_type: string;
  user: UserRef;
}

export interface TokenInfo {
  created_at: string;
  id: string;
  name: string | null;
  org: string;
  role: Role;
}

/** `POST /fn/v1/_admin/auth/token`, by `grant_type`. */
export type TokenRequest = {
  email: string;
  grant_type: "password";
  password: string;
} | {
  grant_type: "refresh_token";
  refresh_token: string;
};

/** A user as the admin API shows one (never the password or its hash). */
export interface UserInfo {
  created_at: string;
  email: string;
  id: string;
  orgs: Membership[];
}

/** The signed-in user, as the token endpoint names them. */
export interface UserRef {
  email: string;
  id: string;
}
