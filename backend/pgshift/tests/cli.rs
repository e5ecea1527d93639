//! The `pgshift` binary as users run it: `serve` on its flags, `token create`, and a clean exit
//! on SIGTERM. It lives beside the crate (not in the top-level tests/) because only a package's
//! own integration tests get its binary built for them (`CARGO_BIN_EXE_pgshift`).

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
