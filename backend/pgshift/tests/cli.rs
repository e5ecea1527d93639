//! The `pgshift` binary as users run it: `serve` on its flags, `token create|list|revoke`, the
//! client commands' exit codes, and a clean exit on SIGTERM. It lives beside the crate (not in
//! the top-level tests/) because only a package's own integration tests get its binary built
//! for them (`CARGO_BIN_EXE_pgshift`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pgshift_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgshift"))
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgshift-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn serve_token_and_sigterm() {
    let bin = pgshift_bin();
    let dir = temp_dir();
    let data = dir.join("data");

    // Bad flags are refused with a reason and a non-zero exit.
    let out = Command::new(&bin)
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
    let out = Command::new(&bin)
        .args(["token", "create", "--role", "root", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role"));

    let mut server = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PGSHIFT_DATA_DIR", &data)
        .env("PGSHIFT_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log is read on its own thread (so the server never blocks on a full pipe) and the
    // address waited for with a deadline.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stderr = server.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server logs its address within 30 s");
        if let Some(rest) = line.split("pgshift listening addr=").nth(1) {
            break rest.trim().to_string();
        }
    };

    let out = Command::new(&bin)
        .args(["token", "create", "--role", "admin", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let resp = client
            .get(format!("http://{addr}/api/v1/clusters"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let resp = client
            .get(format!("http://{addr}/api/v1/clusters"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    });

    stop_with_sigterm(&mut server);
    let log = log.join().unwrap().join("\n");
    assert!(log.contains("pgshift stopped"), "{log}");
    assert!(data.join("pgshift.db").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn configuration_file_is_layered_under_env_and_flags() {
    let bin = pgshift_bin();
    let dir = temp_dir();
    let file = dir.join("pgshift.toml");

    std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lisen") && err.contains("pgshift.toml"),
        "{err}"
    );

    std::fs::write(&file, "copy_parallelism = 0\n").unwrap();
    let out = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("copy_parallelism"));

    // trusted_proxies: from the file, and from the environment over it.
    std::fs::write(&file, "trusted_proxies = [\"proxy.internal\"]\n").unwrap();
    let out = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("trusted_proxies") && err.contains("proxy.internal"),
        "{err}"
    );
    std::fs::write(&file, "trusted_proxies = [\"127.0.0.1\"]\n").unwrap();
    let out = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&file)
        .env("PGSHIFT_TRUSTED_PROXIES", "10.0.0.0/8,from-env")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("trusted_proxies") && err.contains("from-env"),
        "{err}"
    );

    // The file's data directory is used by `token create` too; the flag wins over the file.
    let from_file = dir.join("from-file");
    std::fs::write(
        &file,
        format!("data_dir = {:?}\n", from_file.display().to_string()),
    )
    .unwrap();
    let out = Command::new(&bin)
        .args(["token", "create", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(from_file.join("server-key.json").exists());
    let from_flag = dir.join("from-flag");
    let out = Command::new(&bin)
        .args(["token", "create", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&from_flag)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(from_flag.join("server-key.json").exists());
    // The environment wins over the file too.
    let from_env = dir.join("from-env");
    let out = Command::new(&bin)
        .args(["token", "create", "--config"])
        .arg(&file)
        .env("PGSHIFT_DATA_DIR", &from_env)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(from_env.join("server-key.json").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Runs the binary with `args` and no PGSHIFT_* settings from the caller's environment.
fn pgshift(args: &[&str]) -> std::process::Output {
    let mut command = Command::new(pgshift_bin());
    command.args(args);
    for var in ["PGSHIFT_URL", "PGSHIFT_TOKEN", "PGSHIFT_CLUSTER_DSN"] {
        command.env_remove(var);
    }
    command.output().unwrap()
}

/// A failure as scripts see it: the documented exit code and one line on stderr.
#[track_caller]
fn assert_fails(out: &std::process::Output, code: i32, reason: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one reason line: {err:?}");
    assert!(err.contains(reason), "{err}");
}

#[test]
fn client_exit_codes() {
    let dir = temp_dir();
    let data = dir.join("data");
    // Usage errors: 2.
    assert_fails(&pgshift(&["migration", "frobnicate"]), 2, "frobnicate");
    assert_fails(&pgshift(&["cluster", "list"]), 2, "PGSHIFT_TOKEN");
    assert_fails(
        &pgshift(&["migration", "wait", "shop", "--token", "t"]),
        2,
        "--synced",
    );
    assert_fails(
        &pgshift(&[
            "migration",
            "wait",
            "shop",
            "--synced",
            "--timeout",
            "soon",
            "--token",
            "t",
        ]),
        2,
        "soon",
    );
    // Nothing listening: 6.
    assert_fails(
        &pgshift(&[
            "migration",
            "list",
            "--url",
            "http://127.0.0.1:1",
            "--token",
            "t",
        ]),
        6,
        "cannot reach",
    );
    let help = pgshift(&["migration", "wait", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--lag-below"));
    // The cutover and verify commands document their own codes, and fail like the others.
    for command in ["cutover", "verify"] {
        let help = pgshift(&["migration", command, "--help"]);
        assert!(help.status.success());
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            text.contains("7 verification found differences")
                && text.contains("8 cutover or verification failed or aborted"),
            "{text}"
        );
    }
    assert_fails(
        &pgshift(&[
            "migration",
            "cutover",
            "shop",
            "--max-lag",
            "soon",
            "--token",
            "t",
        ]),
        2,
        "soon",
    );
    assert_fails(
        &pgshift(&[
            "migration",
            "verify",
            "shop",
            "--url",
            "http://127.0.0.1:1",
            "--token",
            "t",
        ]),
        6,
        "cannot reach",
    );

    // Against a running server: 0, 4 (not found), 3 (refused).
    let mut server = Command::new(pgshift_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PGSHIFT_DATA_DIR", &data)
        .env("PGSHIFT_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = server.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let log = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = loop {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server logs its address within 30 s");
        if let Some(rest) = line.split("pgshift listening addr=").nth(1) {
            break format!("http://{}", rest.trim());
        }
    };
    let data_arg = data.display().to_string();
    let out = pgshift(&[
        "token",
        "create",
        "--role",
        "admin",
        "--subject",
        "ci",
        "--data-dir",
        &data_arg,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let out = pgshift(&["cluster", "list", "--url", &url, "--token", &token]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("NAME"));
    let out = pgshift(&[
        "migration",
        "list",
        "--json",
        "--url",
        &url,
        "--token",
        &token,
    ]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    assert_fails(
        &pgshift(&[
            "migration",
            "show",
            "shop",
            "--url",
            &url,
            "--token",
            &token,
        ]),
        4,
        "not found",
    );
    assert_fails(
        &pgshift(&["cluster", "list", "--url", &url, "--token", "forged"]),
        3,
        "unauthorized",
    );

    // token list shows it; once revoked, the client is refused (3).
    let out = pgshift(&["token", "list", "--data-dir", &data_arg]);
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    let id = listing
        .lines()
        .find(|l| l.contains(" ci "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{listing}"))
        .to_string();
    let out = pgshift(&["token", "revoke", &id, "--data-dir", &data_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fails(
        &pgshift(&["cluster", "list", "--url", &url, "--token", &token]),
        3,
        "revoked",
    );
    assert_fails(
        &pgshift(&["token", "revoke", "not-an-id", "--data-dir", &data_arg]),
        4,
        "not found",
    );

    stop_with_sigterm(&mut server);
    log.join().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// `pgshift user create` and the first admin: the generated password is logged once on the first
/// start and works; created users can sign in to the dashboard; weak or duplicate users are refused.
#[test]
fn user_create_and_first_admin() {
    use std::io::Write;
    let bin = pgshift_bin();
    let data = temp_dir().join("data");
    let create = |name: &str, stdin: Option<&str>| {
        let mut cmd = Command::new(&bin);
        cmd.args(["user", "create", name, "--role", "operator", "--data-dir"])
            .arg(&data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if stdin.is_some() {
            cmd.arg("--password-stdin");
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    };

    let mut server = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PGSHIFT_DATA_DIR", &data)
        .env("PGSHIFT_LOG", "info")
        .env_remove("PGSHIFT_ADMIN_PASSWORD")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = server.stderr.take().unwrap();
    // Stopped even when an assertion fails, so no server outlives the test.
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.to_string()])
                .status();
        }
    }
    let stop = Stop(server.id());
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let log = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut admin_password, mut addr) = (None, None);
    while addr.is_none() {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server logs its address within 30 s");
        if line.contains("one-time password") {
            let pw = line.split(" password=").nth(1).expect("password field");
            admin_password = pw.split_whitespace().next().map(str::to_string);
        }
        if let Some(rest) = line.split("pgshift listening addr=").nth(1) {
            addr = Some(rest.trim().to_string());
        }
    }
    let admin_password = admin_password.expect("the first admin's password is logged");
    let addr = addr.unwrap();

    let out = create("bob", Some("too-short\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 12"));
    let out = create("bob", Some("bob-password-long\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "a given password is never printed");
    let out = create("bob", Some("bob-password-long\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = create("carl", None);
    assert!(out.status.success());
    let carl_password = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(carl_password.len(), 20);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        for (name, password, expected) in [
            ("admin", admin_password.as_str(), 303),
            ("bob", "bob-password-long", 303),
            ("carl", carl_password.as_str(), 303),
            ("carl", "bob-password-long", 401),
        ] {
            let resp = client
                .post(format!("http://{addr}/ui/sign-in"))
                .form(&[("name", name), ("password", password)])
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), expected, "signing in {name}");
        }
    });

    // Managing users: list, set-role, set-password, remove; a changed user's sessions end at once.
    let user = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new(&bin);
        cmd.arg("user")
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    };
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let sign_in = |name: &'static str, password: String| {
            let client = client.clone();
            let addr = addr.clone();
            async move {
                let resp = client
                    .post(format!("http://{addr}/ui/sign-in"))
                    .form(&[("name", name), ("password", password.as_str())])
                    .send()
                    .await
                    .unwrap();
                let cookie = resp
                    .headers()
                    .get("set-cookie")
                    .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string());
                (resp.status().as_u16(), cookie)
            }
        };
        let page = |cookie: String| {
            let client = client.clone();
            let addr = addr.clone();
            async move {
                client
                    .get(format!("http://{addr}/ui"))
                    .header("cookie", cookie)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        let (status, carl) = sign_in("carl", carl_password.clone()).await;
        assert_eq!(status, 303);
        let carl = carl.unwrap();
        let (_, bob) = sign_in("bob", "bob-password-long".into()).await;
        let bob = bob.unwrap();
        assert_eq!(page(carl.clone()).await, 200);

        let out = user(&["list", "--json"], None);
        assert!(out.status.success());
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let roles: Vec<(String, String)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                (
                    u["name"].as_str().unwrap().into(),
                    u["role"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            roles,
            [
                ("admin".into(), "admin".into()),
                ("bob".into(), "operator".into()),
                ("carl".into(), "operator".into())
            ]
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("argon2"),
            "hashes listed"
        );

        let out = user(&["set-role", "carl", "--role", "viewer"], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            page(carl.clone()).await,
            303,
            "carl's session outlived the role change"
        );
        assert_eq!(page(bob.clone()).await, 200, "bob's session ended too");

        let out = user(
            &["set-password", "bob", "--password-stdin"],
            Some("bob-new-password-2\n"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty());
        assert_eq!(
            page(bob.clone()).await,
            303,
            "bob's session outlived the new password"
        );
        assert_eq!(sign_in("bob", "bob-password-long".into()).await.0, 401);
        assert_eq!(sign_in("bob", "bob-new-password-2".into()).await.0, 303);

        let (_, carl) = sign_in("carl", carl_password.clone()).await;
        let out = user(&["remove", "carl"], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            page(carl.unwrap()).await,
            303,
            "a removed user's session still works"
        );
        let out = user(&["remove", "carl"], None);
        assert_eq!(out.status.code(), Some(4));
        let out = user(&["remove", "admin"], None);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("only admin"));
        let out = user(&["set-role", "admin", "--role", "viewer"], None);
        assert_eq!(out.status.code(), Some(1));
    });

    drop(stop);
    assert!(server.wait().unwrap().success());
    let all = log.join().unwrap().join("\n");
    assert_eq!(
        all.matches(admin_password.as_str()).count(),
        1,
        "logged once"
    );
    let _ = std::fs::remove_dir_all(data.parent().unwrap());
}

/// Sends SIGTERM and waits (at most 30 s, polling the child) for a clean exit.
fn stop_with_sigterm(server: &mut std::process::Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "pgshift did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
