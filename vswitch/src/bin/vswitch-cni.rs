//! `vswitch-cni`: the CNI plugin. The runtime sets `CNI_*` and writes the network configuration
//! on stdin; the result, or the spec's error JSON, goes to stdout (see `vswitch::cni`).

use std::io::{Read, Write};
use std::process::ExitCode;

use vswitch::cni::{self, Env, codes};

/// A configuration larger than this is not a network configuration.
const MAX_STDIN: u64 = 1 << 20;

fn main() -> ExitCode {
    let env = Env::from_lookup(|key| std::env::var(key).ok());
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().take(MAX_STDIN).read_to_end(&mut stdin) {
        Ok(_) => cni::run(&env, &stdin),
        Err(e) => Err(codes::error(
            "1.0.0",
            codes::IO_FAILURE,
            "cannot read the network configuration",
            format!("stdin: {e}"),
        )),
    };
    let (text, status) = match outcome {
        Ok(Some(json)) => (json, ExitCode::SUCCESS),
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => (
            serde_json::to_string(&e)
                .unwrap_or_else(|_| format!(r#"{{"code":{},"msg":"vswitch-cni failed"}}"#, e.code)),
            ExitCode::FAILURE,
        ),
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    status
}
