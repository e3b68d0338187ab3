//! Backends: the IR as text a kernel tool loads.

pub mod iptables;
pub mod nft;

/// A comment both backends can quote: no quotes, backslashes or control characters inside, cut to
/// at most `max` bytes (on a character boundary, ending in `...`).
pub(crate) fn sanitize_comment(s: &str, max: usize) -> String {
    let mut c: String = s
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if c.len() > max {
        let mut end = max - 3;
        while !c.is_char_boundary(end) {
            end -= 1;
        }
        c.truncate(end);
        c.push_str("...");
    }
    c
}
