//! A real headless Chromium for the console tests, driven over WebDriver (chromedriver and
//! fantoccini). The test command installs Debian's `chromium` and `chromium-driver` when
//! missing; `ETLQ_CHROMEDRIVER` / `ETLQ_CHROMIUM` override where they are.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::helpers::{free_port, wait_for};

pub const UI_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Browser {
    pub client: Client,
    driver: Child,
    /// Chromium's profile: also how its processes are found if one left the group.
    profile: tempfile::TempDir,
    shots: PathBuf,
    shot_no: usize,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; screenshots go to
    /// `target/tmp/console-screenshots/<test>/`.
    pub async fn start(test: &str) -> Browser {
        let driver_bin =
            std::env::var("ETLQ_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium =
            std::env::var("ETLQ_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        if !std::path::Path::new(&driver_bin).exists() {
            crate::helpers::missing_service(&format!(
                "{driver_bin} is missing (Debian's chromium and chromium-driver)"
            ));
        }
        let port = free_port();
        // Its own process group, which the Chromium it starts inherits: dropping the Browser
        // (a test that panics included) kills them all, not only chromedriver.
        let driver = Command::new(&driver_bin)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let url = format!("http://127.0.0.1:{port}");
        wait_for(
            Duration::from_secs(20),
            "chromedriver to answer",
            || async {
                let r = reqwest::get(format!("{url}/status")).await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         "--no-first-run", "--disable-extensions",
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("start a Chromium session");
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("console-screenshots")
            .join(test);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            driver,
            profile,
            shots,
            shot_no: 0,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Saves a screenshot of the viewport as `<n>-<name>.png`.
    pub async fn shot(&mut self, name: &str) {
        self.shot_no += 1;
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{:02}-{name}.png", self.shot_no));
        std::fs::write(&path, png).unwrap();
    }

    pub async fn find(&self, css: &str) -> Element {
        self.wait_find(css).await
    }

    /// Waits for an element matching `css`.
    pub async fn wait_find(&self, css: &str) -> Element {
        wait_for(UI_TIMEOUT, &format!("element {css}"), || async {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` (a function body returning a value) returns something truthy;
    /// returns it.
    pub async fn wait_js(&self, what: &str, script: &str) -> Value {
        wait_for(UI_TIMEOUT, what, || async {
            let v = self.client.execute(script, vec![]).await.ok()?;
            let truthy =
                !matches!(v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            truthy.then_some(v)
        })
        .await
    }

    /// Text of the first element matching `css`, or "" when there is none.
    pub async fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : '';",
            json!(css)
        );
        self.js(&script)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn wait_text(&self, css: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for(UI_TIMEOUT, &format!("text of {css}"), || async {
            let t = self.text(css).await;
            pred(&t).then_some(t)
        })
        .await
    }

    pub async fn click(&self, css: &str) {
        self.wait_find(css).await.click().await.expect("click");
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self.wait_find(css).await;
        el.clear().await.expect("clear");
        el.send_keys(text).await.expect("type");
    }

    /// Every form control on the page has a label (or an aria-label), and none is kept out
    /// of the tab order: the accessibility basics the console promises. Returns the offenders.
    pub async fn unlabelled_or_untabbable(&self) -> Vec<String> {
        let v = self
            .js(
                r#"
                const bad = [];
                for (const el of document.querySelectorAll('input, select, textarea, button, a[href]')) {
                  const name = el.id || el.outerHTML.slice(0, 60);
                  if (el.tabIndex < 0) bad.push('not tabbable: ' + name);
                  if (el.matches('input, select, textarea')
                      && el.labels.length === 0 && !el.getAttribute('aria-label')) {
                    bad.push('no label: ' + name);
                  }
                  if (el.matches('button') && !el.textContent.trim() && !el.getAttribute('aria-label')) {
                    bad.push('button without a name: ' + name);
                  }
                }
                return bad;
                "#,
            )
            .await;
        serde_json::from_value(v).unwrap()
    }

    /// Presses Tab from the top of the page until the element with `id` has focus; returns
    /// how many presses it took (panics if it is never reached).
    pub async fn tab_to(&self, id: &str) -> usize {
        self.js("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);")
            .await;
        for n in 1..=200 {
            self.press("\u{E004}").await;
            let active = self.js("return document.activeElement.id;").await;
            if active == json!(id) {
                return n;
            }
        }
        panic!("#{id} is not reachable with the Tab key");
    }

    /// Presses Enter on the focused element.
    pub async fn press_enter(&self) {
        self.press("\u{E007}").await;
    }

    /// Presses a key as the keyboard does: to whatever has the focus. Not `send_keys` on
    /// the active element: the page's live refresh may replace that element between looking
    /// it up and typing into it, which WebDriver answers with "element not interactable"
    /// (the race behind a console test that failed once in a full run).
    async fn press(&self, key: &str) {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let value = key.chars().next().expect("a key");
        let keys = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value })
            .then(KeyAction::Up { value });
        self.client
            .perform_actions(keys)
            .await
            .unwrap_or_else(|e| panic!("press {key:?}: {e}"));
    }

    pub async fn close(self) {
        let _ = self.client.clone().close().await;
        // Drop stops the processes.
    }

    /// Processes whose command line names this browser's profile directory.
    pub fn browser_pids(&self) -> Vec<i32> {
        let marker = format!("--user-data-dir={}", self.profile.path().display());
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                String::from_utf8_lossy(&cmd)
                    .contains(&marker)
                    .then_some(pid)
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = self.driver.id() as i32;
        // SAFETY: signalling the process group this Browser started (chromedriver leads it).
        unsafe {
            libc::killpg(group, libc::SIGKILL);
        }
        let _ = self.driver.wait();
        // A Chromium process that left the group is still found by its profile.
        for pid in self.browser_pids() {
            // SAFETY: a process started for this Browser (its command line names our profile).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}
