//! A client of the admin and invoke APIs, configured from `REACTOR_URL`, `REACTOR_TOKEN`
//! and `REACTOR_ORG`, else from a sign-in (`reactor login`) or the credentials file.

use crate::credentials;
use anyhow::Context;
use reactor_api::{ApiError, ErrorCode, headers};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub struct Client {
    pub http: reqwest::Client,
    pub url: String,
    token: String,
    pub org: String,
    /// Where the URL came from, for the message when the server cannot be reached.
    pub url_from: String,
}

impl Client {
    /// The client commands use: the server `REACTOR_URL` names, else the one signed in to
    /// last (`reactor login`), else the credentials file's; the token `REACTOR_TOKEN`
    /// holds, else the sign-in to that server (renewed when about to expire), else the
    /// credentials file's; the org `REACTOR_ORG` names, else the sign-in's, else the
    /// credentials file's, else `default`.
    pub async fn connect() -> anyhow::Result<Self> {
        let set = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
        let sessions = crate::login::load();
        let url = set("REACTOR_URL").or_else(|| sessions.current.clone());
        if set("REACTOR_TOKEN").is_none()
            && let Some(url) = url
            && let Some((token, org)) = crate::login::token_for(&url).await?
        {
            let org = set("REACTOR_ORG")
                .or(org)
                .unwrap_or_else(|| "default".into());
            let mut client = Self::new(url, token, org);
            client.url_from = if set("REACTOR_URL").is_some() {
                "REACTOR_URL".into()
            } else {
                crate::login::path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the sessions file".into())
            };
            return Ok(client);
        }
        Self::from_env()
    }

    /// Like [`Client::connect`] without sign-ins: the environment, else the credentials
    /// file.
    pub fn from_env() -> anyhow::Result<Self> {
        let saved = credentials::load();
        let pick = |var: &str, from_file: Option<String>| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .or(from_file)
        };
        let url_from = if std::env::var("REACTOR_URL").is_ok_and(|v| !v.is_empty()) {
            "REACTOR_URL".to_string()
        } else {
            credentials::path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the credentials file".into())
        };
        let url = pick("REACTOR_URL", saved.as_ref().map(|c| c.url.clone())).with_context(|| {
            format!(
                "REACTOR_URL is not set and there is no credentials file ({}): start `reactor dev`, which writes one, or export the line it printed",
                credentials::path().map(|p| p.display().to_string()).unwrap_or_default()
            )
        })?;
        let token = pick("REACTOR_TOKEN", saved.as_ref().map(|c| c.token.clone()))
            .context("REACTOR_TOKEN is not set and no credentials file was found")?;
        let org = pick("REACTOR_ORG", saved.as_ref().map(|c| c.org.clone()))
            .unwrap_or_else(|| "default".into());
        let mut client = Self::new(url, token, org);
        client.url_from = url_from;
        Ok(client)
    }

    pub fn new(url: String, token: String, org: String) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: url.trim_end_matches('/').to_string(),
            token,
            org,
            url_from: "the command line".into(),
        }
    }

    /// Sends `req`; a server that cannot be reached is named with where its URL came from.
    pub async fn execute(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        req.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                let cause = std::error::Error::source(&e)
                    .and_then(std::error::Error::source)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| e.to_string());
                anyhow::anyhow!(
                    "cannot reach the Reactor server at {} ({cause}): is `reactor dev` running? (the URL is from {})",
                    self.url,
                    self.url_from
                )
            } else {
                anyhow::Error::new(e).context(format!("calling {}", self.url))
            }
        })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .header(headers::ORG, &self.org)
    }

    pub async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let resp = self.execute(req).await?;
        let resp = check(resp).await?;
        resp.json().await.context("reading the response")
    }

    pub async fn send_empty(&self, req: reqwest::RequestBuilder) -> anyhow::Result<()> {
        let resp = self.execute(req).await?;
        check(resp).await?;
        Ok(())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }
}

/// Turns a non-2xx response into the platform's error.
pub async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let request_id = resp
        .headers()
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await.unwrap_or_default();
    let mut err = api_error(status, &text);
    if let Some(id) = request_id {
        err.details
            .entry("request_id".to_string())
            .or_insert(serde_json::Value::String(id));
    }
    Err(err.into())
}

/// The platform error in `text`, or one that describes the raw response.
pub fn api_error(status: reqwest::StatusCode, text: &str) -> ApiError {
    serde_json::from_str(text)
        .ok()
        .and_then(|v| ApiError::from_body(&v))
        .unwrap_or_else(|| {
            ApiError::new(
                ErrorCode::Internal,
                format!("HTTP {status}: {}", text.trim()),
            )
        })
}
