//! The systemd unit (`systemd/exchange.service`) is sandboxed the way a trusted service
//! is, and valid: `systemd-analyze security --offline=yes` scores it 2.5 or lower and
//! `systemd-analyze verify` finds nothing. Needs `systemd-analyze` (fails without it).
//!
//! Both read a copy whose binary paths point at the binary under test, since the unit
//! names its installed place (`/usr/local/bin/exchange`), which `verify` checks exists.

use std::process::Command;

fn unit_copy() -> std::path::PathBuf {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/exchange.service")).unwrap();
    assert!(unit.contains("/usr/local/bin/exchange serve") && unit.contains("/usr/local/bin/exchange migrate --if-configured"), "{unit}");
    let dir = std::env::temp_dir().join(format!("exchange-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("exchange.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/exchange", env!("CARGO_BIN_EXE_exchange"))).unwrap();
    path
}

fn analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze").args(args).output().expect("systemd-analyze is required for this test (Debian: systemd)")
}

#[test]
fn the_unit_is_sandboxed_and_valid() {
    let unit = unit_copy();
    let unit = unit.to_str().unwrap();
    let verify = analyze(&["verify", unit]);
    let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(verify.status.success() && said.trim().is_empty(), "verify: {said}");
    let security = analyze(&["security", "--offline=yes", "--no-pager", unit]);
    let report = String::from_utf8_lossy(&security.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1)?.split(": ").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {report}"));
    assert!(score <= 2.5, "exposure {score}:\n{report}");
    let _ = std::fs::remove_dir_all(std::path::Path::new(unit).parent().unwrap());
}
