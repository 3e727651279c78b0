/**
 * Errors as the platform sends them: `{"error": {"code", "message", "details"}}`, thrown as
 * a {@link ReactorError} carrying the code, the HTTP status, the message and the details.
 */

/** A platform error: `code` is one of the API's error codes (`function_not_found`, ...). */
export class ReactorError extends Error {
  readonly code: string;
  readonly status: number;
  readonly details: Record<string, unknown>;
  /** The request id (`X-Request-Id`), what to quote when asking for help. */
  readonly requestId?: string;

  constructor(
    code: string,
    status: number,
    message: string,
    details: Record<string, unknown> = {},
    requestId?: string,
  ) {
    super(`${code}: ${message}`);
    this.name = "ReactorError";
    this.code = code;
    this.status = status;
    this.details = details;
    this.requestId = requestId;
  }
}

interface ErrorBody {
  error?: { code?: unknown; message?: unknown; details?: unknown };
}

/** The platform's error in `body`, if `body` is one. */
export function parseError(
  status: number,
  body: unknown,
  requestId?: string,
): ReactorError | undefined {
  const error = (body as ErrorBody | null)?.error;
  if (!error || typeof error.code !== "string") {
    return undefined;
  }
  const details =
    error.details && typeof error.details === "object"
      ? (error.details as Record<string, unknown>)
      : {};
  return new ReactorError(
    error.code,
    status,
    typeof error.message === "string" ? error.message : error.code,
    details,
    requestId ?? (typeof details.request_id === "string" ? details.request_id : undefined),
  );
}

/** The error of a failed response: the platform's, else one naming the status. */
export async function errorFrom(res: Response): Promise<ReactorError> {
  const requestId = res.headers.get("x-request-id") ?? undefined;
  const text = await res.text().catch(() => "");
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return (
    parseError(res.status, body, requestId) ??
    new ReactorError(
      "http_error",
      res.status,
      `HTTP ${res.status}${text ? `: ${text.slice(0, 200)}` : ""}`,
      {},
      requestId,
    )
  );
}
