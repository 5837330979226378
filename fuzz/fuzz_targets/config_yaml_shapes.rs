//! gateway.yaml loading on YAML built to stress the parser: anchors, aliases (also of
//! aliases), flow and block nesting, tags and quoted scalars, composed from the fuzzer's
//! bytes so that mutations keep producing mostly valid YAML. Every input must give a Config
//! or errors quickly (libFuzzer's -timeout and -rss_limit_mb catch amplification and
//! quadratic parsing), never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = compose(data);
    let result = portcullis::config::parse(
        &text,
        std::path::Path::new("/nonexistent/gateway.yaml"),
        |_| None,
    );
    if let Err(errors) = result {
        assert!(!errors.0.is_empty());
        let _ = errors.to_string();
    }
});

/// Turns bytes into YAML text: each byte is an instruction, the next byte (if any) its
/// argument. Repetition counts let a short input describe a large document.
fn compose(data: &[u8]) -> String {
    let mut out = String::from("server:\n  listen: 127.0.0.1:0\nx: ");
    let mut open: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < data.len() && out.len() < 1 << 20 {
        let op = data[i];
        let arg = data.get(i + 1).copied().unwrap_or(0);
        i += 2;
        match op % 12 {
            0 => {
                out.push('[');
                open.push(b']');
            }
            1 => {
                out.push_str("{k");
                out.push_str(&(arg % 8).to_string());
                out.push_str(": ");
                open.push(b'}');
            }
            2 => out.push_str(&format!("&a{} ", arg % 8)),
            3 => out.push_str(&format!("*a{}", arg % 8)),
            4 => out.push_str(&format!("s{arg}")),
            5 => out.push_str(", "),
            6 => {
                if let Some(close) = open.pop() {
                    out.push(close as char);
                }
            }
            7 => {
                // Many copies of the last alias or scalar: amplification in few bytes.
                let n = usize::from(arg) * 64;
                let item = format!("*a{}", arg % 8);
                out.push('[');
                out.push_str(&vec![item; n.max(1)].join(", "));
                out.push(']');
            }
            8 => {
                // Deep flow nesting in one instruction.
                let n = usize::from(arg) * 16;
                out.push_str(&"[".repeat(n));
                out.push_str(&"]".repeat(n));
            }
            9 => {
                // A block mapping level on a new line, indented by the argument.
                let indent = usize::from(arg % 64);
                out.push('\n');
                out.push_str(&" ".repeat(indent));
                out.push_str(&format!("b{arg}: "));
            }
            10 => {
                out.push_str(["!!str ", "!t ", "\"q[\" ", "'q]' ", "# c\n"][usize::from(arg % 5)])
            }
            _ => out.push_str(&format!("\ny{arg}: ")),
        }
    }
    while let Some(close) = open.pop() {
        out.push(close as char);
    }
    out.push('\n');
    out
}
