//! A real headless Chromium for the console tests, driven over WebDriver (chromedriver and
//! fantoccini). The test command installs Debian's `chromium` and `chromium-driver` when
//! missing; `ETLQ_CHROMEDRIVER` / `ETLQ_CHROMIUM` override where they are.

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
        assert!(
            std::path::Path::new(&driver_bin).exists(),
            "{driver_bin} is missing: scripts/test installs chromium and chromium-driver"
        );
        let port = free_port();
        let driver = Command::new(&driver_bin)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
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
                         "--no-first-run", "--disable-extensions"],
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
            self.client
                .active_element()
                .await
                .expect("active element")
                .send_keys("\u{E004}")
                .await
                .expect("press Tab");
            let active = self.js("return document.activeElement.id;").await;
            if active == json!(id) {
                return n;
            }
        }
        panic!("#{id} is not reachable with the Tab key");
    }

    /// Presses Enter on the focused element.
    pub async fn press_enter(&self) {
        self.client
            .active_element()
            .await
            .expect("active element")
            .send_keys("\u{E007}")
            .await
            .expect("press Enter");
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
