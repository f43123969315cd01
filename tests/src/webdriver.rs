//! A small W3C WebDriver client over reqwest, for the dashboard's browser tests: new session,
//! navigate, find, text, click, type, run a script, alerts, screenshots, page source.
//!
//! Not thirtyfour (DEPENDENCIES.md's pick): it turns on serde_json's `preserve_order` feature,
//! and cargo unifies features across a workspace build, so every crate of the workspace (the
//! server's canonical JSON, the agent's frames) would be built with a different `Map` than it
//! is tested and shipped with. The protocol needed here is a dozen JSON requests.

use std::path::Path;

use base64::Engine as _;
use serde_json::{Value, json};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How to find an element.
#[derive(Debug, Clone)]
pub enum By {
    /// `id` attribute.
    Id(String),
    /// A CSS selector.
    Css(String),
}

impl By {
    /// By `id`.
    pub fn id(id: &str) -> Self {
        Self::Id(id.to_owned())
    }

    /// By CSS selector.
    pub fn css(selector: &str) -> Self {
        Self::Css(selector.to_owned())
    }

    /// The CSS selector it stands for.
    pub fn selector(&self) -> String {
        match self {
            Self::Id(id) => format!("[id=\"{id}\"]"),
            Self::Css(css) => css.clone(),
        }
    }
}

/// A WebDriver error: the driver's `error` code and message, or the transport's.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Tab key, for [`Session::press`].
pub const TAB: &str = "\u{E004}";
/// The Enter key.
pub const ENTER: &str = "\u{E007}";

/// A browser session.
#[derive(Clone)]
pub struct Session {
    client: reqwest::Client,
    base: String,
}

/// An element of the page.
#[derive(Clone)]
pub struct Element {
    session: Session,
    id: String,
}

impl Session {
    /// A new session on the driver at `driver_url` with `capabilities` (`alwaysMatch`).
    pub async fn new(driver_url: &str, capabilities: Value) -> Result<Self, Error> {
        let client = reqwest::Client::new();
        let value = call(
            &client,
            reqwest::Method::POST,
            &format!("{driver_url}/session"),
            Some(json!({"capabilities": {"alwaysMatch": capabilities}})),
        )
        .await?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| Error(format!("no sessionId in {value}")))?;
        Ok(Self {
            client,
            base: format!("{driver_url}/session/{id}"),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        call(&self.client, method, &format!("{}{path}", self.base), body).await
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> Result<(), Error> {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await
            .map(drop)
    }

    /// The first element matching `by`.
    pub async fn find(&self, by: &By) -> Result<Element, Error> {
        let value = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": by.selector()})),
            )
            .await?;
        self.element(&value)
    }

    /// The element that has the keyboard focus.
    pub async fn active(&self) -> Result<Element, Error> {
        let value = self
            .call(reqwest::Method::GET, "/element/active", None)
            .await?;
        self.element(&value)
    }

    /// Presses `keys` (WebDriver key codes such as [`TAB`] and [`ENTER`], or text) on
    /// whatever has the focus, as a person at the keyboard would.
    pub async fn press(&self, keys: &str) -> Result<(), Error> {
        self.active().await?.send_keys(keys).await
    }

    /// Every element matching `by`.
    pub async fn find_all(&self, by: &By) -> Result<Vec<Element>, Error> {
        let value = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": by.selector()})),
            )
            .await?;
        value
            .as_array()
            .ok_or_else(|| Error(format!("not a list: {value}")))?
            .iter()
            .map(|v| self.element(v))
            .collect()
    }

    fn element(&self, value: &Value) -> Result<Element, Error> {
        Ok(Element {
            session: self.clone(),
            id: value[ELEMENT]
                .as_str()
                .ok_or_else(|| Error(format!("not an element: {value}")))?
                .to_owned(),
        })
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, Error> {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The text of the open alert, if one is open.
    pub async fn alert_text(&self) -> Option<String> {
        self.call(reqwest::Method::GET, "/alert/text", None)
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    /// The page's HTML as the browser has it now.
    pub async fn source(&self) -> Result<String, Error> {
        let value = self.call(reqwest::Method::GET, "/source", None).await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<(), Error> {
        let value = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap_or_default())
            .map_err(|e| Error(format!("screenshot: {e}")))?;
        std::fs::write(path, png).map_err(|e| Error(format!("{}: {e}", path.display())))
    }

    /// Ends the session (closes the browser).
    pub async fn quit(&self) -> Result<(), Error> {
        self.call(reqwest::Method::DELETE, "", None).await.map(drop)
    }
}

impl Element {
    async fn call(
        &self,
        method: reqwest::Method,
        what: &str,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        self.session
            .call(method, &format!("/element/{}/{what}", self.id), body)
            .await
    }

    /// Its rendered text.
    pub async fn text(&self) -> Result<String, Error> {
        let value = self.call(reqwest::Method::GET, "text", None).await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Its `class` attribute, if any.
    pub async fn attr(&self, name: &str) -> Result<Option<String>, Error> {
        let value = self
            .call(reqwest::Method::GET, &format!("attribute/{name}"), None)
            .await?;
        Ok(value.as_str().map(str::to_owned))
    }

    /// Clicks it.
    pub async fn click(&self) -> Result<(), Error> {
        self.call(reqwest::Method::POST, "click", Some(json!({})))
            .await
            .map(drop)
    }

    /// Empties it (an input or textarea).
    pub async fn clear(&self) -> Result<(), Error> {
        self.call(reqwest::Method::POST, "clear", Some(json!({})))
            .await
            .map(drop)
    }

    /// Types `text` into it.
    pub async fn send_keys(&self, text: &str) -> Result<(), Error> {
        self.call(reqwest::Method::POST, "value", Some(json!({"text": text})))
            .await
            .map(drop)
    }
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, Error> {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| Error(format!("{url}: {e}")))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| Error(format!("{url}: {status}: {e}")))?;
    let value = body.get("value").cloned().unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(Error(format!(
            "{url}: {status}: {}: {}",
            value["error"].as_str().unwrap_or("?"),
            value["message"].as_str().unwrap_or("")
        )));
    }
    Ok(value)
}
