//! Makes sure Chart.js (from npm, `dashboard/package.json`) is present to be
//! embedded into the binary: runs `npm ci` when `node_modules` is missing.

use std::path::Path;
use std::process::Command;

const CHART: &str = "dashboard/node_modules/chart.js/dist/chart.umd.min.js";

fn main() {
    println!("cargo:rerun-if-changed=dashboard/package.json");
    println!("cargo:rerun-if-changed=dashboard/package-lock.json");
    println!("cargo:rerun-if-changed={CHART}");
    if Path::new(CHART).exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir("dashboard")
        .status();
    let problem = match status {
        Ok(s) if s.success() && Path::new(CHART).exists() => return,
        Ok(s) => format!("`npm ci` in dashboard/ failed ({s})"),
        Err(e) => format!("npm could not be run ({e})"),
    };
    eprintln!(
        "\nerror: hybrid-lb embeds Chart.js from dashboard/node_modules, which is missing, \
         and {problem}.\nInstall Node.js and npm, then run `npm ci` in dashboard/ and build again.\n"
    );
    std::process::exit(1);
}
