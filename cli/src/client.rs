//! A client of the admin and invoke APIs, configured from `REACTOR_URL`, `REACTOR_TOKEN`
//! and `REACTOR_ORG`, else from the credentials file.

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
}

impl Client {
    pub fn from_env() -> anyhow::Result<Self> {
        let saved = credentials::load();
        let pick = |var: &str, from_file: Option<String>| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .or(from_file)
        };
        let url = pick("REACTOR_URL", saved.as_ref().map(|c| c.url.clone())).context(
            "REACTOR_URL is not set and no credentials file was found (start `reactor dev` first)",
        )?;
        let token = pick("REACTOR_TOKEN", saved.as_ref().map(|c| c.token.clone()))
            .context("REACTOR_TOKEN is not set and no credentials file was found")?;
        let org = pick("REACTOR_ORG", saved.as_ref().map(|c| c.org.clone()))
            .unwrap_or_else(|| "default".into());
        Ok(Self::new(url, token, org))
    }

    pub fn new(url: String, token: String, org: String) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: url.trim_end_matches('/').to_string(),
            token,
            org,
        }
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
        let resp = req
            .send()
            .await
            .with_context(|| format!("connecting to {}", self.url))?;
        let resp = check(resp).await?;
        resp.json().await.context("reading the response")
    }

    pub async fn send_empty(&self, req: reqwest::RequestBuilder) -> anyhow::Result<()> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("connecting to {}", self.url))?;
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
    let text = resp.text().await.unwrap_or_default();
    Err(api_error(status, &text).into())
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
