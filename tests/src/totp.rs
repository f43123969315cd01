//! TOTP codes from a reference implementation, PyPI's `pyotp`, run through `python -c`: the
//! second-factor tests check our server against it rather than against our own code. Without
//! pyotp a test skips, saying how to enable it (`pip install pyotp`), unless
//! `OUTPOST_TEST_TOTP=1` asks for it (CI), when it fails instead. `OUTPOST_TEST_PYTHON` names
//! the interpreter that has it (default `python3`; CI's is a virtualenv's).

use std::process::{Command, Stdio};

/// pyotp, found.
pub struct PyOtp {
    python: String,
}

impl PyOtp {
    /// pyotp, or `None` (after printing why `test` is skipped).
    pub fn find(test: &str) -> Option<Self> {
        let python = std::env::var("OUTPOST_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let found = Command::new(&python)
            .args(["-c", "import pyotp"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            if std::env::var("OUTPOST_TEST_TOTP").as_deref() == Ok("1") {
                panic!("OUTPOST_TEST_TOTP=1 but {python} cannot import pyotp (pip install pyotp)");
            }
            eprintln!(
                "SKIPPED {test}: needs PyPI's pyotp: pip install pyotp (CI sets OUTPOST_TEST_TOTP=1)"
            );
            return None;
        }
        Some(Self { python })
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(&self.python)
            .arg("-c")
            .arg(program)
            .args(args)
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "pyotp: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The code of `secret` (base32) `offset_s` seconds from now.
    pub fn code(&self, secret: &str, offset_s: i64) -> String {
        self.run(
            "import sys, time, pyotp; print(pyotp.TOTP(sys.argv[1]).at(time.time() + int(sys.argv[2])))",
            &[secret, &offset_s.to_string()],
        )
    }

    /// Now's step and the codes of the steps before, at and after it (one call, so that the
    /// three belong to one instant): `(step, [previous, current, next])`.
    pub fn window(&self, secret: &str) -> (i64, [String; 3]) {
        let text = self.run(
            "import sys, time, pyotp\n\
             t = pyotp.TOTP(sys.argv[1]); now = time.time()\n\
             print(int(now // 30), t.at(now - 30), t.at(now), t.at(now + 30))",
            &[secret],
        );
        let parts: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(parts.len(), 4, "pyotp printed {text:?}");
        (
            parts[0].parse().expect("a step"),
            [parts[1].into(), parts[2].into(), parts[3].into()],
        )
    }

    /// A 6-digit code that is none of the window's (so surely wrong).
    pub fn wrong(&self, secret: &str) -> String {
        let (_, window) = self.window(secret);
        (0..1_000_000)
            .map(|n| format!("{:06}", (n * 7919 + 123_457) % 1_000_000))
            .find(|c| !window.contains(c))
            .expect("a wrong code")
    }

    /// The parameters pyotp reads from an `otpauth://` URL: `(secret, issuer, name, digits,
    /// period)`.
    pub fn parse_uri(&self, url: &str) -> String {
        self.run(
            "import sys, pyotp; t = pyotp.parse_uri(sys.argv[1]); print(t.secret, t.issuer, t.name, t.digits, t.interval)",
            &[url],
        )
    }
}
