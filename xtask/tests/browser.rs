//! The web app (`web/`) in a real headless Chromium, driven over WebDriver, against the real
//! local stack of `cargo xtask dev` (nginx serving `web/`, gateway, api, PostgreSQL, inference
//! on the tiny random model): what a user does, step by step, through the page only: register,
//! log out, a wrong password shown, log in, a reply that grows in several steps while it
//! streams, a reply stopped half way (the api keeps it), the conversation found again after a
//! reload, an older session opened, markup in a message shown as text, a file uploaded and
//! downloaded back byte for byte, an oversize upload's 413 shown, log out. Screenshots at a
//! desktop and a phone width go to `target/browser/`.
//!
//! Beside it, two checks on the files themselves: the page's weight, and that no script
//! turns text into HTML.

mod browser_support;
mod dev_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use browser_support::webdriver::{Browser, Element, keys, wait_for};
use dev_support::{NGINX_PORT, Stack, free_offset, scratch_state_dir, service_binaries};
use serde_json::{Value, json};

/// The page's budget: HTML + CSS + JavaScript, each gzipped.
const PAGE_BUDGET_BYTES: usize = 50 * 1024;
/// The site's body limit in the default topology (`site.body_limit_mib`).
const BODY_LIMIT_BYTES: usize = 25 * 1024 * 1024;
/// A page step (a view switch, a list refresh, an answer of the api).
const STEP: Duration = Duration::from_secs(20);
/// A whole reply of the tiny model on a debug build, on a loaded machine.
const REPLY: Duration = Duration::from_secs(180);
/// Tries for a reply long enough to stream in several steps.
const TRIES: usize = 8;
/// Tries for a reply still running on the api when the Stop reaches it: a tiny model on a fast
/// machine may finish a reply before the click lands.
const STOP_TRIES: usize = 20;

const EMAIL: &str = "browser@example.org";
const PASSWORD: &str = "correct horse battery";

fn web_dir() -> PathBuf {
    dev_support::workspace_root().join("web")
}

/// The page's own files: what a browser downloads to show it.
fn page_files() -> Vec<PathBuf> {
    let mut files = vec![web_dir().join("index.html"), web_dir().join("app.css")];
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(web_dir().join("js"))
        .expect("web/js")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "js"))
        .collect();
    scripts.sort();
    files.extend(scripts);
    files
}

fn gzipped_size(bytes: &[u8]) -> usize {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip").len()
}

#[test]
fn the_page_weighs_under_its_budget_gzipped() {
    let files = page_files();
    let mut total = 0;
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let size = gzipped_size(&bytes);
        eprintln!("{:>6} B gzipped  {}", size, file.display());
        total += size;
    }
    eprintln!("{total} B gzipped in all ({} files)", files.len());
    assert!(files.len() >= 5, "{files:?}");
    assert!(
        total < PAGE_BUDGET_BYTES,
        "the page weighs {total} B gzipped, over its {PAGE_BUDGET_BYTES} B budget"
    );
}

#[test]
fn no_script_turns_text_into_html() {
    for file in page_files() {
        let text = std::fs::read_to_string(&file).expect("read");
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "createContextualFragment",
            "DOMParser",
            "eval(",
            "new Function",
        ] {
            assert!(!text.contains(sink), "{} uses {sink}", file.display());
        }
        if file.extension().is_some_and(|ext| ext == "html") {
            // The Content-Security-Policy allows no inline script or style.
            assert!(
                !text.contains("<script>"),
                "{}: inline script",
                file.display()
            );
            assert!(!text.contains("style="), "{}: inline style", file.display());
        }
    }
}

/// The page as the user sees it, with the shortcuts the steps use.
struct Page {
    browser: Browser,
    site: String,
}

impl Page {
    fn element(&self, selector: &str) -> Element {
        self.browser.wait_for_element(selector, STEP)
    }

    /// Clicks what matches `selector`, finding it again when the page replaced it meanwhile
    /// (lists are re-rendered when the api answers).
    fn click(&self, selector: &str) {
        wait_for(&format!("a click on {selector}"), STEP, || {
            let element = self.element(selector);
            self.browser.try_click(&element).then_some(())
        });
    }

    fn script(&self, body: &str) -> Value {
        self.browser.execute(body, &[])
    }

    fn notice(&self) -> String {
        self.script(
            "const n = document.getElementById('notice'); return n.hidden ? '' : n.textContent;",
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    fn wait_for_notice(&self, expected: &str) -> String {
        wait_for(&format!("a notice with {expected:?}"), STEP, || {
            Some(self.notice()).filter(|text| text.contains(expected))
        })
    }

    fn open(&self) {
        self.browser.goto(&self.site);
        self.element("#auth-form");
    }

    fn submit_credentials(&self, email: &str, password: &str, button: &str) {
        let email_input = self.element("#email");
        self.browser.clear(&email_input);
        self.browser.type_into(&email_input, email);
        let password_input = self.element("#password");
        self.browser.clear(&password_input);
        self.browser.type_into(&password_input, password);
        self.click(button);
    }

    fn wait_for_chat(&self) {
        self.element("#chat-view");
        self.element("#message");
    }

    fn log_out(&self) {
        self.click("#logout");
        self.element("#auth-form");
    }

    /// How many replies the page shows, and the last one's state and text.
    fn replies(&self) -> (usize, Value) {
        let seen = self.script(
            "const all = [...document.querySelectorAll('#messages article.assistant')];
             const last = all[all.length - 1];
             return [all.length, last ? { state: last.dataset.state,
                                          text: last.querySelector('.body').textContent } : null];",
        );
        (seen[0].as_u64().unwrap_or(0) as usize, seen[1].clone())
    }

    /// Types `message` and presses Enter; waits for the new reply element.
    fn send(&self, message: &str) -> usize {
        let (before, _) = self.replies();
        let input = self.element("#message");
        self.browser
            .type_into(&input, &format!("{message}{}", keys::ENTER));
        wait_for("the reply element", STEP, || {
            let (now, _) = self.replies();
            (now > before).then_some(now)
        })
    }

    /// Waits until the last reply is no longer streaming; its state and text.
    fn finished_reply(&self) -> (String, String) {
        wait_for("the end of the reply", REPLY, || {
            let (_, last) = self.replies();
            let state = last["state"].as_str()?.to_owned();
            (state != "streaming").then(|| (state, last["text"].as_str().unwrap_or("").to_owned()))
        })
    }

    /// Records every change of the last reply's text while it streams (in the page).
    fn watch_replies(&self) {
        self.script(
            "window.__growth = [];
             window.__observer?.disconnect();
             const log = document.getElementById('messages');
             window.__observer = new MutationObserver(() => {
               const all = log.querySelectorAll('article.assistant');
               const last = all[all.length - 1];
               if (last) window.__growth.push([last.querySelector('.body').textContent.length,
                                               last.dataset.state]);
             });
             window.__observer.observe(log, { subtree: true, childList: true,
                                              characterData: true, attributes: true });",
        );
    }

    /// The distinct non-empty lengths the reply had while it was still streaming.
    fn growth_steps(&self) -> usize {
        let growth = self.script("return window.__growth;");
        let lengths: std::collections::BTreeSet<u64> = growth
            .as_array()
            .expect("growth")
            .iter()
            .filter(|step| step[1] == "streaming")
            .filter_map(|step| step[0].as_u64())
            .filter(|length| *length > 0)
            .collect();
        lengths.len()
    }

    /// Reloads until the page shows `count` replies (the api stores a stopped one once it
    /// notices the client left); the last one.
    fn reload_until_replies(&self, count: usize) -> Value {
        wait_for(&format!("{count} replies after a reload"), STEP, || {
            self.browser.refresh();
            self.wait_for_chat();
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            loop {
                let (now, last) = self.replies();
                if now == count {
                    return Some(last);
                }
                if std::time::Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    }

    fn session_in_url(&self) -> String {
        self.script("return location.hash;")
            .as_str()
            .and_then(|hash| hash.strip_prefix("#session/"))
            .unwrap_or_else(|| panic!("no session in the URL"))
            .to_owned()
    }

    fn messages_text(&self) -> String {
        self.script("return document.getElementById('messages').textContent;")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn file_row(&self, name: &str) -> Option<String> {
        self.script(&format!(
            "const row = [...document.querySelectorAll('#files li[data-id]')]
               .find(li => li.querySelector('.name').textContent === {name});
             return row ? row.dataset.id : null;",
            name = json!(name)
        ))
        .as_str()
        .map(str::to_owned)
    }

    fn upload(&self, path: &Path) {
        let input = self.browser.find_all("#file-input");
        let input = input.first().expect("the file input");
        self.browser.type_into(input, &path.display().to_string());
    }
}

#[test]
fn a_user_chats_stops_reloads_and_moves_files_in_a_real_browser() {
    if !testkit::postgres::require() {
        return;
    }
    if testkit::require_tool("nginx", "apt-get install -y nginx").is_none() {
        return;
    }
    let Some((chromium, chromedriver)) = browser_support::webdriver::tools() else {
        return;
    };
    let bin_dir = service_binaries();
    let (dir, state_dir) = scratch_state_dir();
    let offset = free_offset();
    let (_stack, _) = Stack::up_detached(&state_dir, offset, &bin_dir);
    let site = format!("http://127.0.0.1:{}/", NGINX_PORT + offset);
    served_with_its_policy(&site);

    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).expect("downloads dir");
    let page = Page {
        browser: Browser::start(&chromium, &chromedriver, &downloads),
        site: site.clone(),
    };

    // Register; a password the api refuses first (422), shown as a message.
    page.open();
    page.submit_credentials(EMAIL, "short", "#register");
    let refused = page.wait_for_notice("422");
    assert!(refused.contains("password"), "{refused}");
    page.submit_credentials(EMAIL, PASSWORD, "#register");
    page.wait_for_chat();
    let shown = page.script("return document.getElementById('user-email').textContent;");
    assert_eq!(shown, EMAIL);

    // Log out, a wrong password, then log in.
    page.log_out();
    page.submit_credentials(EMAIL, "not the password", "#login");
    page.wait_for_notice("Wrong email or password");
    page.submit_credentials(EMAIL, PASSWORD, "#login");
    page.wait_for_chat();
    assert_eq!(page.notice(), "", "a stale notice after logging in");

    // A reply grows in several steps before it is complete. A random model sometimes ends
    // after a few tokens, shown in one step: ask again (in the same session).
    let first_question = "Hello from the browser test";
    let mut steps = 0;
    for _ in 0..TRIES {
        page.watch_replies();
        page.send(first_question);
        let (state, text) = page.finished_reply();
        assert_eq!(state, "complete", "the reply ended as {state}: {text:?}");
        steps = page.growth_steps();
        if steps >= 2 {
            break;
        }
    }
    assert!(
        steps >= 2,
        "no reply grew in more than one step in {TRIES} tries"
    );
    let first_session = page.session_in_url();

    // Stop a reply half way: the page keeps what came, and so does the api, which a reload
    // shows. The tiny model is fast: when the api had finished (and stored) the whole reply
    // before the stop reached it, try again.
    let mut stopped = None;
    for _ in 0..STOP_TRIES {
        let count = page.send("Please write a long answer");
        let state = wait_for("a first delta", REPLY, || {
            let (_, last) = page.replies();
            let state = last["state"].as_str()?.to_owned();
            let started = last["text"].as_str().is_some_and(|text| !text.is_empty());
            (state != "streaming" || started).then_some(state)
        });
        if state != "streaming" {
            continue; // finished before it could be stopped
        }
        // Not waited for: the reply may end (and Stop hide) at any moment.
        let stop = page.browser.find_all("#stop");
        if !stop
            .first()
            .is_some_and(|stop| page.browser.try_click(stop))
        {
            continue;
        }
        let (state, shown) = page.finished_reply();
        if state != "partial" {
            assert_eq!(state, "complete", "after Stop: {state} {shown:?}");
            continue;
        }
        let stored = page.reload_until_replies(count);
        if stored["state"] == "partial" {
            stopped = Some((shown, stored["text"].as_str().unwrap_or("").to_owned()));
            break;
        }
        eprintln!("the api completed the reply before the stop reached it; again");
    }
    // Both are rendered Markdown, from a prefix and from the whole stored reply: no prefix
    // relation holds between them (a `*` may open emphasis only once its pair arrived).
    let (shown, stored) = stopped.expect("a reply stopped half way and stored as partial");
    assert!(
        !shown.is_empty() && !stored.is_empty(),
        "{shown:?} {stored:?}"
    );
    assert_eq!(page.session_in_url(), first_session);
    assert!(page.messages_text().contains(first_question));
    let listed = page.script(&format!(
        "return document.querySelector('#sessions li[data-id=\"{first_session}\"]').textContent;"
    ));
    assert!(
        listed.as_str().unwrap_or("").contains(first_question),
        "{listed}"
    );

    // Markup in a message is text (the same renderer shows replies), also once reloaded; a
    // Shift+Enter is a new line, not a send.
    page.click("#new-session");
    wait_for("an empty conversation", STEP, || {
        (page.replies().0 == 0 && page.script("return location.hash;") == "").then_some(())
    });
    page.script("window.__xss = null;");
    let markup = format!(
        "**Markup** <img src=x onerror=\"window.__xss='img'\">{}{}{}<script>window.__xss='script'</script>",
        keys::SHIFT,
        keys::ENTER,
        keys::NULL
    );
    page.send(&markup);
    page.finished_reply();
    let second_session = page.session_in_url();
    assert_ne!(second_session, first_session);
    for moment in ["as sent", "after a reload"] {
        let seen = page.script(
            "const user = document.querySelector('#messages article.user');
             return { injected: document.querySelectorAll('#messages img, #messages script').length,
                      xss: window.__xss,
                      text: user.querySelector('.body').textContent,
                      strong: user.querySelector('strong')?.textContent,
                      lines: user.querySelectorAll('br').length };",
        );
        assert_eq!(
            seen["injected"], 0,
            "{moment}: markup became elements: {seen}"
        );
        assert_eq!(seen["xss"], Value::Null, "{moment}: a script ran: {seen}");
        let text = seen["text"].as_str().unwrap_or_default();
        assert!(
            text.contains("<img src=x onerror=") && text.contains("<script>"),
            "{moment}: {seen}"
        );
        assert_eq!(seen["strong"], "Markup", "{moment}: {seen}");
        assert_eq!(seen["lines"], 1, "{moment}: Shift+Enter: {seen}");
        page.browser.refresh();
        page.wait_for_chat();
        page.script("window.__xss = null;");
        wait_for("the restored markup message", STEP, || {
            (page.replies().0 > 0).then_some(())
        });
    }

    // Open the older session from the list.
    page.click(&format!(
        "#sessions li[data-id=\"{first_session}\"] button[data-action=open]"
    ));
    wait_for("the older session", STEP, || {
        page.messages_text().contains(first_question).then_some(())
    });
    assert_eq!(page.session_in_url(), first_session);
    assert!(!page.messages_text().contains("<img src=x"));

    // Upload a file (with progress) and download it back, byte for byte; then delete it.
    let upload_path = dir.path().join("notes of the test.txt");
    let content: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&upload_path, &content).expect("write the upload");
    page.script(
        "window.__progress = [];
         new MutationObserver(() => window.__progress.push(
             document.getElementById('upload-progress').value))
           .observe(document.getElementById('upload-progress'), { attributes: true });",
    );
    page.upload(&upload_path);
    let file_id = wait_for("the uploaded file in the list", STEP, || {
        page.file_row("notes of the test.txt")
    });
    let progress = page.script("return window.__progress;");
    assert!(
        progress
            .as_array()
            .is_some_and(|values| values.iter().any(|v| v.as_f64().is_some_and(|v| v > 0.0))),
        "no upload progress shown: {progress}"
    );
    page.click(&format!(
        "#files li[data-id=\"{file_id}\"] button[data-action=download]"
    ));
    let downloaded = downloads.join("notes of the test.txt");
    let bytes = wait_for("the downloaded file", STEP, || {
        std::fs::read(&downloaded)
            .ok()
            .filter(|bytes| bytes.len() == content.len())
    });
    assert!(bytes == content, "the download differs from the upload");

    // Screenshots at a desktop and a phone width, with a conversation on screen.
    let shots = dev_support::workspace_root().join("target/browser");
    page.browser.set_window_size(1280, 860);
    page.browser.screenshot(&shots.join("desktop.png"));
    page.browser.set_window_size(390, 844);
    page.element("#menu-toggle");
    page.browser.screenshot(&shots.join("phone.png"));
    page.browser.set_window_size(1280, 860);
    eprintln!("screenshots in {}", shots.display());

    // An upload over the site's body limit: the 413 is shown.
    let big_path = dir.path().join("too big.txt");
    let file = std::fs::File::create(&big_path).expect("big file");
    file.set_len(BODY_LIMIT_BYTES as u64 + 1)
        .expect("size the big file");
    page.upload(&big_path);
    page.wait_for_notice("413");
    assert!(page.file_row("too big.txt").is_none());

    page.click(&format!(
        "#files li[data-id=\"{file_id}\"] button[data-action=delete]"
    ));
    wait_for("the file gone from the list", STEP, || {
        page.file_row("notes of the test.txt")
            .is_none()
            .then_some(())
    });

    // Delete the markup session: gone from the list, also for the api after a reload.
    page.click(&format!(
        "#sessions li[data-id=\"{second_session}\"] button[data-action=delete]"
    ));
    let gone =
        format!("return !document.querySelector('#sessions li[data-id=\"{second_session}\"]');");
    wait_for("the deleted session gone from the list", STEP, || {
        (page.script(&gone) == true).then_some(())
    });
    page.browser.refresh();
    page.wait_for_chat();
    page.element(&format!("#sessions li[data-id=\"{first_session}\"]"));
    assert_eq!(
        page.script(&gone),
        true,
        "the deleted session is back after a reload"
    );

    // Log out: the token is gone, also after a reload.
    page.log_out();
    assert_eq!(
        page.script("return sessionStorage.getItem('cairn.token');"),
        Value::Null
    );
    page.browser.refresh();
    page.element("#auth-form");
    assert!(
        page.browser
            .find_all("#chat-view")
            .iter()
            .all(|e| !page.browser.is_displayed(e))
    );
}

/// nginx serves the page with a policy that allows only the site's own scripts and styles,
/// the modules as JavaScript, and asks browsers to revalidate them.
fn served_with_its_policy(site: &str) {
    let client = reqwest::blocking::Client::new();
    let page = client.get(site).send().expect("GET /");
    assert_eq!(page.status().as_u16(), 200);
    let header = |response: &reqwest::blocking::Response, name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let policy = header(&page, "content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let body = page.text().expect("page");
    assert!(body.contains("/js/app.js"), "{body}");
    let module = client
        .get(format!("{site}js/app.js"))
        .send()
        .expect("GET /js/app.js");
    assert_eq!(module.status().as_u16(), 200);
    assert!(header(&module, "content-type").contains("javascript"));
    let missing = client
        .get(format!("{site}js/missing.js"))
        .send()
        .expect("GET a missing module");
    assert_eq!(missing.status().as_u16(), 404);
}
