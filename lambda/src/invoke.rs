//! Invocations through the Function URL, signed with SigV4.
//!
//! Function URLs with `AWS_IAM` auth check a signature over the whole request, payload
//! hash included, so the body is buffered (up to [`MAX_REQUEST_BYTES`], Lambda's own limit;
//! beyond, 413 `payload_too_large` before anything is sent). The answer streams back.
//!
//! The harness marks every answer of the function with `x-reactor-harness` (and the first
//! one of each process with `x-reactor-cold-start: true`, which is how a cold start is
//! detected); an answer without the mark comes from Lambda itself and is mapped:
//! 429 → `too_many_requests`, a timeout → `function_timeout`, other 5xx →
//! `function_crashed` with Lambda's message, 403 (the signature or the role's permission
//! refused) → `worker_unavailable`.

use crate::{LambdaError, MAX_REQUEST_BYTES, lambda_function_name};
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::body::Body;
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use reactor_api::config::LambdaSettings;
use reactor_api::{Invocation, InvokeError, InvokeFailure, InvokeOutcome};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::RwLock;

pub use reactor_bun_dist::{COLD_MARK, HARNESS_MARK};
/// Credentials are fetched again this long before they expire.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// How much of an error answer from Lambda is read for its message.
const ERROR_BODY_LIMIT: usize = 8 * 1024;

/// Request headers that belong to this hop or to AWS's signature, never forwarded.
const DROPPED: [&str; 13] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
];

pub struct Invoker {
    settings: Arc<LambdaSettings>,
    lambda: aws_sdk_lambda::Client,
    credentials: SharedCredentialsProvider,
    cached: RwLock<Option<Credentials>>,
    /// Function URL per Lambda function name.
    urls: RwLock<HashMap<String, Arc<str>>>,
    http: reqwest::Client,
}

impl Invoker {
    pub fn new(
        settings: Arc<LambdaSettings>,
        lambda: aws_sdk_lambda::Client,
        shared: &aws_config::SdkConfig,
    ) -> Result<Self, LambdaError> {
        let credentials = shared.credentials_provider().ok_or_else(|| {
            LambdaError::State("no AWS credentials provider is configured".into())
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            // Bodies are relayed as they are: no transparent decompression.
            .no_gzip()
            .build()
            .map_err(|e| LambdaError::State(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            settings,
            lambda,
            credentials,
            cached: RwLock::new(None),
            urls: RwLock::new(HashMap::new()),
            http,
        })
    }

    async fn credentials(&self) -> Result<Credentials, InvokeError> {
        let fresh = |c: &Credentials| {
            c.expiry()
                .is_none_or(|at| at > SystemTime::now() + REFRESH_BEFORE)
        };
        if let Some(c) = self.cached.read().await.as_ref().filter(|c| fresh(c)) {
            return Ok(c.clone());
        }
        let mut cached = self.cached.write().await;
        if let Some(c) = cached.as_ref().filter(|c| fresh(c)) {
            return Ok(c.clone());
        }
        match self.credentials.provide_credentials().await {
            Ok(c) => {
                *cached = Some(c.clone());
                Ok(c)
            }
            // Refreshing ahead failed: what is cached still signs until it expires.
            Err(e) => match cached
                .as_ref()
                .filter(|c| c.expiry().is_none_or(|at| at > SystemTime::now()))
            {
                Some(c) => {
                    tracing::warn!(error = %e, "refreshing the AWS credentials failed; using the current ones until they expire");
                    Ok(c.clone())
                }
                None => Err(InvokeError::Unavailable {
                    message: format!("no AWS credentials to sign the Lambda invocation: {e}"),
                }),
            },
        }
    }

    /// The Function URL of the alias, looked up once per function and kept.
    async fn base_url(&self, name: &str) -> Result<Arc<str>, InvokeError> {
        if let Some(url) = self.urls.read().await.get(name) {
            return Ok(url.clone());
        }
        let config = self
            .lambda
            .get_function_url_config()
            .function_name(name)
            .qualifier(&self.settings.alias)
            .send()
            .await
            .map_err(|e| InvokeError::NotReady {
                message: format!(
                    "the Function URL of {name} is not available: {}",
                    LambdaError::aws("GetFunctionUrlConfig", &e)
                ),
            })?;
        let url = rebase(
            config.function_url(),
            self.settings.function_url_endpoint.as_deref(),
        );
        let url: Arc<str> = Arc::from(url.trim_end_matches('/'));
        self.urls
            .write()
            .await
            .insert(name.to_string(), url.clone());
        Ok(url)
    }

    pub async fn invoke(&self, invocation: Invocation) -> Result<InvokeOutcome, InvokeFailure> {
        let Invocation {
            spec,
            request,
            deadline,
            ..
        } = invocation;
        let timeout = || InvokeError::Timeout {
            timeout_ms: spec.timeout_ms,
        };
        let name = lambda_function_name(&self.settings.function_prefix, &spec.org, &spec.function);
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_REQUEST_BYTES) {
            return Err(InvokeError::PayloadTooLarge {
                limit_bytes: MAX_REQUEST_BYTES,
            }
            .into());
        }
        let body = tokio::time::timeout_at(
            deadline,
            Limited::new(body, MAX_REQUEST_BYTES as usize).collect(),
        )
        .await
        .map_err(|_| timeout())?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                InvokeError::PayloadTooLarge {
                    limit_bytes: MAX_REQUEST_BYTES,
                }
            } else {
                InvokeError::InvalidRequest {
                    message: format!("reading the request body: {e}"),
                }
            }
        })?
        .to_bytes();

        let (base, credentials) = tokio::time::timeout_at(deadline, async {
            Ok::<_, InvokeError>((self.base_url(&name).await?, self.credentials().await?))
        })
        .await
        .map_err(|_| timeout())??;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        // Parsed once: the URL signed is exactly the URL sent.
        let url = reqwest::Url::parse(&format!("{base}{path}")).map_err(|e| {
            InvokeError::InvalidRequest {
                message: format!("the request path cannot be sent to the Function URL: {e}"),
            }
        })?;
        let headers = signed_headers(
            &parts.method,
            url.as_str(),
            &parts.headers,
            &body,
            &credentials,
            &self.settings.region,
            SystemTime::now(),
        )?;
        let sent = self
            .http
            .request(parts.method.clone(), url)
            .headers(headers)
            .body(body)
            .send();
        let response = tokio::time::timeout_at(deadline, sent)
            .await
            .map_err(|_| timeout())?
            .map_err(|e| InvokeError::Unavailable {
                message: format!("the Function URL of {name} did not answer: {e}"),
            })?;
        if !response.headers().contains_key(HARNESS_MARK)
            && matches!(response.status().as_u16(), 403 | 404)
        {
            // The URL may have been deleted or recreated: look it up again next time.
            self.urls.write().await.remove(&name);
        }
        answer(response, spec.timeout_ms, deadline).await
    }
}

/// The Function URL with its scheme and host replaced by `endpoint`, when set.
fn rebase(function_url: &str, endpoint: Option<&str>) -> String {
    let Some(endpoint) = endpoint else {
        return function_url.to_string();
    };
    let path = function_url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("/");
    format!("{}{path}", endpoint.trim_end_matches('/'))
}

/// The headers to send: the request's own (less this hop's and AWS's) with the host,
/// the payload hash and the SigV4 signature of `credentials` at `time`.
pub fn signed_headers(
    method: &http::Method,
    url: &str,
    incoming: &HeaderMap,
    body: &[u8],
    credentials: &Credentials,
    region: &str,
    time: SystemTime,
) -> Result<HeaderMap, InvokeError> {
    let uri: http::Uri = url.parse().map_err(|e| InvokeError::InvalidRequest {
        message: format!("the Function URL {url:?} is not valid: {e}"),
    })?;
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| InvokeError::InvalidRequest {
            message: format!("the Function URL {url:?} has no host"),
        })?;
    let mut headers = HeaderMap::new();
    for (name, value) in incoming {
        let lower = name.as_str();
        if DROPPED.contains(&lower) || lower.starts_with("x-amz-") {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(&host).map_err(|e| InvokeError::InvalidRequest {
            message: format!("host {host:?}: {e}"),
        })?,
    );
    // Signed header values must be text; a header that is not is refused, not dropped.
    let mut pairs = Vec::with_capacity(headers.len());
    for (name, value) in &headers {
        let text = value.to_str().map_err(|_| InvokeError::InvalidRequest {
            message: format!("header {name} is not valid text and cannot be signed for Lambda"),
        })?;
        pairs.push((name.as_str(), text));
    }
    let hash = hex::encode(Sha256::digest(body));
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let identity: Identity = credentials.clone().into();
    let signing_error = |e: &dyn std::fmt::Display| InvokeError::Unavailable {
        message: format!("signing the Lambda invocation: {e}"),
    };
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("lambda")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| signing_error(&e))?
        .into();
    let signable = SignableRequest::new(
        method.as_str(),
        url,
        pairs.into_iter(),
        SignableBody::Precomputed(hash),
    )
    .map_err(|e| signing_error(&e))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| signing_error(&e))?
        .into_parts();
    for (name, value) in instructions.headers() {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| signing_error(&e))?;
        let value = HeaderValue::from_str(value).map_err(|e| signing_error(&e))?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// Turns the Function URL's answer into the function's response or a Reactor error.
async fn answer(
    response: reqwest::Response,
    timeout_ms: u64,
    deadline: tokio::time::Instant,
) -> Result<InvokeOutcome, InvokeFailure> {
    let status = response.status();
    let mut headers = response.headers().clone();
    let Some(mark) = headers.remove(HARNESS_MARK) else {
        return Err(lambda_error(status, &headers, response, timeout_ms)
            .await
            .into());
    };
    let cold_start = headers.remove(COLD_MARK).is_some_and(|v| v == "true");
    if mark == "crashed" {
        let message = error_text(response).await;
        return Err(InvokeFailure {
            error: InvokeError::Crashed { message },
            cold_start,
        });
    }
    for hop in ["connection", "keep-alive", "transfer-encoding"] {
        headers.remove(hop);
    }
    // After the headers the deadline still holds: the stream ends there with an error,
    // so that the client sees a cut answer, not a complete one.
    let stream = futures::stream::unfold(
        (
            Box::pin(response.bytes_stream()),
            Box::pin(tokio::time::sleep_until(deadline)),
            false,
        ),
        |(mut body, mut sleep, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                item = body.next() => {
                    item.map(|r| (r.map_err(std::io::Error::other), (body, sleep, false)))
                }
                _ = &mut sleep => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the function exceeded limits.timeout_ms while streaming",
                    )),
                    (body, sleep, true),
                )),
            }
        },
    );
    let mut out = http::Response::new(Body::from_stream(stream));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(InvokeOutcome {
        response: out,
        cold_start,
    })
}

/// An answer that Lambda made itself (no harness mark).
async fn lambda_error(
    status: StatusCode,
    headers: &HeaderMap,
    response: reqwest::Response,
    timeout_ms: u64,
) -> InvokeError {
    let kind = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).to_string())
        .unwrap_or_default();
    let text = error_text(response).await;
    let message = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => v
            .get("Message")
            .or_else(|| v.get("message"))
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or(text),
        Err(_) => text,
    };
    let described = if kind.is_empty() {
        message.clone()
    } else {
        format!("{kind}: {message}")
    };
    let timed_out =
        kind.contains("Timedout") || kind.contains("Timeout") || message.contains("timed out");
    match status.as_u16() {
        429 => InvokeError::TooManyRequests {
            message: format!("Lambda throttled the invocation ({described})"),
        },
        413 => InvokeError::PayloadTooLarge {
            limit_bytes: MAX_REQUEST_BYTES,
        },
        401 | 403 => InvokeError::Unavailable {
            message: format!(
                "AWS refused the signed request to the Function URL ({status}, {described}); check the router's AWS credentials and its lambda:InvokeFunctionUrl and lambda:InvokeFunction permissions"
            ),
        },
        500..=599 if timed_out => InvokeError::Timeout { timeout_ms },
        500..=599 => InvokeError::Crashed {
            message: format!("Lambda answered {status}: {described}"),
        },
        _ => InvokeError::Unavailable {
            message: format!("unexpected answer {status} from the Function URL: {described}"),
        },
    }
}

/// The start of an error answer's body, as text.
async fn error_text(response: reqwest::Response) -> String {
    let mut stream = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            buf.extend_from_slice(&chunk[..chunk.len().min(ERROR_BODY_LIMIT - buf.len())]);
            if buf.len() >= ERROR_BODY_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    String::from_utf8_lossy(&buf).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_keeps_the_path() {
        assert_eq!(
            rebase(
                "https://abc.lambda-url.us-east-1.on.aws/",
                Some("http://127.0.0.1:9/")
            ),
            "http://127.0.0.1:9/"
        );
        assert_eq!(
            rebase("https://abc.lambda-url.us-east-1.on.aws/", None),
            "https://abc.lambda-url.us-east-1.on.aws/"
        );
    }

    #[test]
    fn signing_adds_date_hash_and_authorization_and_drops_hop_headers() {
        let mut incoming = HeaderMap::new();
        incoming.insert("content-type", HeaderValue::from_static("text/plain"));
        incoming.insert("connection", HeaderValue::from_static("keep-alive"));
        incoming.insert("x-amz-date", HeaderValue::from_static("forged"));
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let h = signed_headers(
            &http::Method::POST,
            "http://127.0.0.1:9/hello?a=1",
            &incoming,
            b"body",
            &creds,
            "us-east-1",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
        .expect("signed");
        assert_eq!(
            h.get("host").map(|v| v.as_bytes()),
            Some(&b"127.0.0.1:9"[..])
        );
        assert!(h.get("connection").is_none());
        assert_eq!(
            h.get("x-amz-date").map(|v| v.as_bytes()),
            Some(&b"20231114T221320Z"[..])
        );
        assert_eq!(
            h.get("x-amz-content-sha256").and_then(|v| v.to_str().ok()),
            Some(hex::encode(Sha256::digest(b"body")).as_str())
        );
        let auth = h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/lambda/aws4_request"
            ),
            "{auth}"
        );
        assert!(
            auth.contains("content-type;host;x-amz-content-sha256;x-amz-date"),
            "{auth}"
        );
    }
}
