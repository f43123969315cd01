//! Scripts in the dashboard, in a real browser (CONTRACT.md §20, issue 50): upload a signed bundle
//! from the page and read its files (escaped, highlighted); open the editor on the last
//! version, edit with the keyboard, search, save a draft, sign it with the CLI on "the
//! operator's machine", run the new version from its page on an agent that pins the key; then
//! disable the script and see its run refused.
//!
//! Skipped without chromium and chromedriver unless `OUTPOST_TEST_BROWSER=1` (see `ui.rs`).

use outpost_e2e::webdriver::{By, TAB};
use outpost_e2e::{Agent, CliHome, Scripts, Server, wait_for};
use serde_json::json;

use crate::library_drafts::{NAME, RUN_SH, cli, operator_key, signed_bundle};
use crate::ui::Browser;

const OWNER: (&str, &str) = ("ada@example.com", "correct horse battery staple");
/// Text of a bundle that would run script if it were not escaped.
const MARKUP: &str = "<script>alert('bundle')</script><img src=x onerror=alert('img')>";

async fn click(browser: &Browser, by: By) {
    browser
        .driver
        .find(&by)
        .await
        .unwrap_or_else(|e| panic!("{by:?}: {e:?}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {by:?}: {e:?}"));
}

async fn type_into(browser: &Browser, by: By, text: &str) {
    browser
        .driver
        .find(&by)
        .await
        .unwrap_or_else(|e| panic!("{by:?}: {e:?}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("type into {by:?}: {e:?}"));
}

async fn current_url(browser: &Browser) -> String {
    browser
        .driver
        .execute("return location.pathname + location.search;", Vec::new())
        .await
        .expect("location")
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_upload_a_signed_bundle_and_read_its_files() {
    let Some(browser) = Browser::start("browser_upload_a_signed_bundle_and_read_its_files").await
    else {
        return;
    };
    let server = Server::start().await;
    assert!(server.user_create(OWNER.0, "owner", Some(OWNER.1)).0);
    let home = CliHome::new(&server);
    let work = tempfile::tempdir().expect("tempdir");
    let (key, _) = operator_key(&home, work.path());
    let bundle = signed_bundle(
        &home,
        work.path(),
        &key,
        "1.0.0",
        &[
            ("run.sh", &format!("{RUN_SH}# {MARKUP}\n"), true),
            (
                "lib/helper.py",
                "def helper():\n    return 'ok'  # \"quoted\"\n",
                false,
            ),
        ],
    );
    let signature = work.path().join(format!("{NAME}-1.0.0.tar.gz.sig"));

    browser.sign_in(&server, OWNER.0, OWNER.1).await;
    browser
        .driver
        .goto(&format!("{}/ui/scripts", server.url))
        .await
        .expect("scripts page");
    browser
        .wait_text(By::css("main h1"), "Script library")
        .await;
    click(&browser, By::css("#upload-form summary")).await;
    type_into(
        &browser,
        By::id("upload-bundle"),
        bundle.to_str().expect("utf-8"),
    )
    .await;
    type_into(
        &browser,
        By::id("upload-signature"),
        signature.to_str().expect("utf-8"),
    )
    .await;
    click(&browser, By::id("upload-submit")).await;
    // The version's page, on its entrypoint.
    browser.wait_text(By::id("version-title"), "1.0.0").await;
    let shown = browser
        .wait_text(By::id("file-content"), "hello, $OUTPOST_PARAM_WHO")
        .await;
    assert!(
        shown.contains(MARKUP),
        "the markup is shown as text: {shown}"
    );
    assert!(
        browser.driver.alert_text().await.is_none(),
        "no script of the bundle ran"
    );
    let html = browser.driver.source().await.expect("source");
    assert!(!html.contains("<script>alert"), "escaped in the page");
    // Highlighted (a keyword and a comment of the shell) with line numbers.
    let keyword = browser
        .driver
        .execute(
            "return Array.from(document.querySelectorAll('#file-content .hl-k')).map(e => e.textContent).join(',');",
            Vec::new(),
        )
        .await
        .expect("keywords");
    assert!(
        keyword.as_str().unwrap_or_default().contains("echo"),
        "{keyword}"
    );
    let numbers = browser
        .driver
        .execute(
            "return document.querySelectorAll('#file-content .ln').length;",
            Vec::new(),
        )
        .await
        .expect("lines");
    assert_eq!(numbers, json!(3), "run.sh has three lines");
    // Every file is reachable: the other one, and the manifest.
    click(&browser, By::css("#files a[href$='file=lib%2Fhelper.py']")).await;
    browser
        .wait_text(By::id("file-name"), "lib/helper.py")
        .await;
    browser
        .wait_text(By::id("file-content"), "return 'ok'")
        .await;
    click(
        &browser,
        By::css("#files a[href$='file=outpost-bundle.json']"),
    )
    .await;
    browser
        .wait_text(By::id("file-content"), "\"entrypoint\"")
        .await;
    // The list shows it, enabled.
    browser
        .driver
        .goto(&format!("{}/ui/scripts", server.url))
        .await
        .expect("scripts page");
    let row = browser.wait_text(By::css("#scripts tbody tr"), NAME).await;
    assert!(row.contains("enabled") && row.contains("1.0.0"), "{row}");
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_edit_a_draft_sign_it_with_the_cli_run_it_and_disable_it() {
    let Some(browser) = Browser::start("browser_edit_a_draft_sign_it_with_the_cli_run_it").await
    else {
        return;
    };
    let server = Server::start().await;
    let api = server.api();
    assert!(server.user_create(OWNER.0, "owner", Some(OWNER.1)).0);
    let home = CliHome::new(&server);
    let work = tempfile::tempdir().expect("tempdir");
    let (key, public) = operator_key(&home, work.path());
    let key_s = key.to_str().expect("utf-8").to_owned();
    let bundle = signed_bundle(
        &home,
        work.path(),
        &key,
        "1.0.0",
        &[("run.sh", RUN_SH, true)],
    );
    cli(
        &home,
        &["scripts", "upload", bundle.to_str().expect("utf-8")],
    );
    // An agent that runs this script when this key signed it.
    let scripts = Scripts::new();
    scripts.write_raw(
        &json!({"scripts": [], "library": {"allow": [NAME], "keys": [public]}}).to_string(),
    );
    let (_, secret) = api.agent_key().await;
    let mut env = scripts.env();
    env.push(("OUTPOST_TAGS".into(), "web".into()));
    let agent = Agent::start_with(&server.url, &secret, None, env);
    agent.wait_online(&api).await;

    browser.sign_in(&server, OWNER.0, OWNER.1).await;
    browser
        .driver
        .goto(&format!("{}/ui/scripts/{NAME}", server.url))
        .await
        .expect("script page");
    click(&browser, By::id("new-version")).await;
    browser.wait_text(By::css("main h1"), "New version").await;
    let proposed = browser
        .driver
        .find(&By::id("draft-version"))
        .await
        .expect("version")
        .attr("value")
        .await
        .expect("value");
    assert_eq!(proposed.as_deref(), Some("1.0.1"), "the next patch version");
    // The editor wraps each file with line numbers.
    let gutter = browser
        .driver
        .execute(
            "return document.querySelector('#file-1').parentNode.querySelector('.gutter').textContent;",
            Vec::new(),
        )
        .await
        .expect("gutter");
    assert_eq!(gutter, json!("1\n2\n3"), "run.sh's lines");
    // Type at the end of run.sh: Tab inserts a tab rather than leaving the file.
    browser
        .driver
        .execute(
            "var a = document.getElementById('file-1'); a.focus(); a.setSelectionRange(a.value.length, a.value.length);",
            Vec::new(),
        )
        .await
        .expect("caret");
    type_into(
        &browser,
        By::id("file-1"),
        &format!("{TAB}echo \"edited in the browser\"\n"),
    )
    .await;
    let value = browser
        .driver
        .execute(
            "return document.getElementById('file-1').value;",
            Vec::new(),
        )
        .await
        .expect("value");
    assert!(
        value
            .as_str()
            .unwrap_or_default()
            .ends_with("\n\techo \"edited in the browser\"\n"),
        "{value}"
    );
    let gutter = browser
        .driver
        .execute(
            "return document.querySelector('#file-1').parentNode.querySelector('.gutter').textContent;",
            Vec::new(),
        )
        .await
        .expect("gutter");
    assert_eq!(gutter, json!("1\n2\n3\n4"), "the gutter follows");
    // Search finds the text in its file.
    type_into(&browser, By::id("editor-find"), "edited").await;
    click(&browser, By::id("editor-find-next")).await;
    browser
        .wait_text(By::id("editor-find-status"), "Found in run.sh, line 3")
        .await;
    click(&browser, By::id("save-draft")).await;
    browser
        .wait_text(By::id("version-title"), "1.0.1 (draft)")
        .await;
    browser
        .wait_text(By::id("file-content"), "edited in the browser")
        .await;
    browser
        .wait_text(
            By::id("sign-command"),
            &format!("outpost scripts sign --draft {NAME}@1.0.1"),
        )
        .await;

    // A draft never runs.
    let (status, job) = api
        .post(
            "/api/jobs",
            json!({"command": "run", "data": {"script": format!("{NAME}@1.0.1")}, "target": {"tags": ["web"]}}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{job}");

    // The operator signs it on their machine after reading its diff.
    let (code, out, err) = home.run_with_key(&[
        "scripts",
        "sign",
        "--draft",
        &format!("{NAME}@1.0.1"),
        "--key",
        &key_s,
        "--yes",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("+\techo \"edited in the browser\""), "{out}");
    assert!(
        out.contains("-  \"version\": \"1.0.0\"") || out.contains("\"version\": \"1.0.1\""),
        "{out}"
    );

    // Run the new version from its page, on the tag.
    browser
        .driver
        .goto(&format!("{}/ui/scripts/{NAME}/versions/1.0.1", server.url))
        .await
        .expect("version page");
    browser.wait_text(By::id("version-title"), "1.0.1").await;
    type_into(&browser, By::id("run-tags"), "web").await;
    type_into(&browser, By::css("input[name='param.WHO']"), "browser").await;
    click(&browser, By::id("run-submit")).await;
    let driver = &browser.driver;
    let job_path = wait_for(
        "the job's page",
        std::time::Duration::from_secs(30),
        || async {
            let path = driver
                .execute("return location.pathname;", Vec::new())
                .await
                .ok()?;
            let path = path.as_str()?.to_owned();
            path.starts_with("/ui/jobs/").then_some(path)
        },
    )
    .await;
    let job_id = job_path.trim_start_matches("/ui/jobs/").to_owned();
    let job = api.wait_job(&job_id).await;
    let run = &job["runs"][0];
    assert_eq!(run["status"], "succeeded", "{job}");
    let (_, output) = api
        .output(
            &job_id,
            run["run_id"].as_str().expect("run_id"),
            "?stream=stdout",
        )
        .await;
    let output = String::from_utf8_lossy(&output);
    assert!(
        output.contains("hello, browser") && output.contains("edited in the browser"),
        "{output}"
    );

    // Disabled from its page: its run is refused, its versions stay.
    browser
        .driver
        .goto(&format!("{}/ui/scripts/{NAME}", server.url))
        .await
        .expect("script page");
    browser
        .driver
        .execute("window.confirm = function () { return true; };", Vec::new())
        .await
        .expect("confirm");
    click(&browser, By::id("disable")).await;
    browser.wait_text(By::id("script-state"), "disabled").await;
    browser
        .driver
        .goto(&format!("{}/ui/scripts/{NAME}/versions/1.0.1", server.url))
        .await
        .expect("version page");
    type_into(&browser, By::id("run-tags"), "web").await;
    click(&browser, By::id("run-submit")).await;
    browser.wait_text(By::css("main"), "is disabled").await;
    assert!(
        !current_url(&browser).await.starts_with("/ui/jobs/"),
        "no job was made"
    );
    let (_, versions) = api.get(&format!("/api/scripts/{NAME}")).await;
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(2));
    browser.quit().await;
}
