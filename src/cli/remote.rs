//! Calls to a running process's REST API.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use etlq::configuration::Settings;

#[derive(Args, Clone)]
pub struct Target {
    /// Every live worker, through PostgreSQL, instead of one process over REST.
    #[arg(long)]
    pub fleet: bool,
    #[command(flatten)]
    pub server: Server,
}

#[derive(Args, Clone)]
pub struct Server {
    /// The process's base URL (default: http://127.0.0.1:<api.port>).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Bearer token (also ETLQ_TOKEN): needed for every /v1 call once the server has api.tokens.
    #[arg(long, env = "ETLQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Server {
    pub fn base(&self, settings: &Settings) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", settings.api.port))
            .trim_end_matches('/')
            .to_string()
    }

    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?)
    }

    /// A JSON call; a non-2xx answer is an error carrying the server's message.
    pub async fn call(
        &self,
        settings: &Settings,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<Value> {
        self.call_with(settings, method, path, None).await
    }

    /// [`Server::call`] with a JSON body.
    pub async fn call_with(
        &self,
        settings: &Settings,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base(settings));
        let mut req = self
            .client()?
            .request(method, &url)
            .timeout(Duration::from_secs(120));
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach etlq at {url}"))?;
        answer(&url, resp).await
    }
}

/// The JSON body of a response, or an error with the server's `{error: {code, message}}`.
pub async fn answer(url: &str, resp: reqwest::Response) -> anyhow::Result<Value> {
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let msg = body["error"]["message"].as_str().unwrap_or("");
        let code = body["error"]["code"].as_str().unwrap_or("");
        bail!("{url}: {status}: {code}: {msg}");
    }
    Ok(body)
}
