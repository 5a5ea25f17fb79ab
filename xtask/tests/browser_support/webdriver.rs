//! `chromedriver` as a guarded process, one browser session on it, and the commands the browser
//! tests send: navigate, find, click, type, run a script, resize, screenshot.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// W3C WebDriver's key for an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long one WebDriver command may take (a page load included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The Unicode code points WebDriver reads as keys.
pub mod keys {
    pub const ENTER: &str = "\u{E007}";
    pub const SHIFT: &str = "\u{E008}";
    /// Releases held modifier keys.
    pub const NULL: &str = "\u{E000}";
}

/// An element of the page, by WebDriver's reference.
#[derive(Debug, Clone)]
pub struct Element(String);

/// A headless Chromium session; the session and chromedriver end when it drops.
pub struct Browser {
    http: reqwest::blocking::Client,
    session_url: String,
    _driver: testkit::ProcessGuard,
}

/// `chromium` and `chromedriver`, or None (with the reason printed) when a test should skip.
pub fn tools() -> Option<(PathBuf, PathBuf)> {
    let chromium = testkit::require_tool("chromium", "apt-get install -y chromium")?;
    let driver = testkit::require_tool("chromedriver", "apt-get install -y chromium-driver")?;
    Some((chromium, driver))
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session on it that saves
    /// downloads into `download_dir` without asking.
    pub fn start(chromium: &Path, driver: &Path, download_dir: &Path) -> Browser {
        let port = testkit::free_port();
        let guard = testkit::ProcessGuard::spawn(
            "chromedriver",
            Command::new(driver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .expect("http client");
        testkit::wait_until("chromedriver", Duration::from_secs(30), || {
            http.get(format!("{base}/status"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|status| status["value"]["ready"] == true)
        });
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium.display().to_string(),
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--window-size=1280,860",
                    ],
                    "prefs": {
                        "download.default_directory": download_dir.display().to_string(),
                        "download.prompt_for_download": false,
                        "safebrowsing.enabled": false,
                    },
                },
            }},
        });
        let created = send(
            &http,
            "POST",
            &format!("{base}/session"),
            Some(&capabilities),
        );
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId from chromedriver: {created}"));
        Browser {
            session_url: format!("{base}/session/{id}"),
            http,
            _driver: guard,
        }
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        send(
            &self.http,
            method,
            &format!("{}{path}", self.session_url),
            body,
        )
    }

    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(&json!({ "url": url })));
    }

    pub fn refresh(&self) {
        self.command("POST", "/refresh", Some(&json!({})));
    }

    /// The elements matching the CSS `selector` now (none is not an error).
    pub fn find_all(&self, selector: &str) -> Vec<Element> {
        let found = self.command(
            "POST",
            "/elements",
            Some(&json!({ "using": "css selector", "value": selector })),
        );
        found
            .as_array()
            .map(|all| all.iter().map(element_of).collect())
            .unwrap_or_default()
    }

    /// The first element matching `selector` once one is displayed; panics after `deadline`.
    pub fn wait_for_element(&self, selector: &str, deadline: Duration) -> Element {
        wait_for(&format!("a visible {selector}"), deadline, || {
            self.find_all(selector)
                .into_iter()
                .find(|element| self.is_displayed(element))
        })
    }

    /// False also for an element the page has replaced since it was found (stale).
    pub fn is_displayed(&self, element: &Element) -> bool {
        try_send(
            &self.http,
            "GET",
            &format!("{}/element/{}/displayed", self.session_url, element.0),
            None,
        )
        .is_ok_and(|shown| shown == true)
    }

    /// Clicks `element` unless WebDriver refuses (it was hidden or removed meanwhile).
    pub fn try_click(&self, element: &Element) -> bool {
        try_send(
            &self.http,
            "POST",
            &format!("{}/element/{}/click", self.session_url, element.0),
            Some(&json!({})),
        )
        .is_ok()
    }

    /// Types `text` into `element` as key presses (see [`keys`]), or for a file input, the
    /// path of the file to choose.
    pub fn type_into(&self, element: &Element, text: &str) {
        self.command(
            "POST",
            &format!("/element/{}/value", element.0),
            Some(&json!({ "text": text })),
        );
    }

    pub fn clear(&self, element: &Element) {
        self.command(
            "POST",
            &format!("/element/{}/clear", element.0),
            Some(&json!({})),
        );
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns what it returns.
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    pub fn set_window_size(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            Some(&json!({ "width": width, "height": height })),
        );
    }

    /// Writes a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let encoded = self.command("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("screenshot is a base64 string"))
            .expect("screenshot is base64");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("screenshot directory");
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.session_url).send();
    }
}

fn element_of(value: &Value) -> Element {
    Element(
        value[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("not an element reference: {value}"))
            .to_owned(),
    )
}

/// One WebDriver request; its `value`, or a panic with WebDriver's error.
fn send(http: &reqwest::blocking::Client, method: &str, url: &str, body: Option<&Value>) -> Value {
    try_send(http, method, url, body).unwrap_or_else(|error| panic!("{error}"))
}

/// One WebDriver request; its `value`, or WebDriver's error as text.
fn try_send(
    http: &reqwest::blocking::Client,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let request = match method {
        "GET" => http.get(url),
        "DELETE" => http.delete(url),
        _ => http.post(url).json(body.unwrap_or(&json!({}))),
    };
    let response = request
        .send()
        .unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"));
    let status = response.status();
    let answer: Value = response
        .json()
        .unwrap_or_else(|e| panic!("WebDriver {method} {url}: answer is not JSON: {e}"));
    if status.is_success() {
        Ok(answer["value"].clone())
    } else {
        Err(format!(
            "WebDriver {method} {url} {body:?}: {status} {}: {}",
            answer["value"]["error"], answer["value"]["message"]
        ))
    }
}

/// Polls `probe` every 50 ms until it gives a value; panics naming `what` after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: not seen within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
