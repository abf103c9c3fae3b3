//! Query strings: parameter names, and the one form decoder (`+` is a space, then percent-decoding with the
//! `percent-encoding` crate) used here and by enrichment for API keys in the query.

/// Query parameter names in order of first appearance, percent-decoded, without values; empty names skipped.
pub fn query_keys(query: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for pair in query.split(['&', ';']) {
        let name = pair.split('=').next().unwrap_or("");
        if name.is_empty() {
            continue;
        }
        let bytes: Vec<u8> = form_decoded(name).collect();
        let name = String::from_utf8_lossy(&bytes).into_owned();
        if !name.is_empty() && !keys.contains(&name) {
            keys.push(name);
        }
    }
    keys
}

/// The bytes a form-encoded query component stands for: `+` is a space, `%XX` one byte; a `%` not followed by two
/// hex digits stays as it is.
pub fn form_decoded(s: &str) -> impl Iterator<Item = u8> + '_ {
    s.split('+').enumerate().flat_map(|(i, part)| {
        let space = (i > 0).then_some(b' ');
        space
            .into_iter()
            .chain(percent_encoding::percent_decode_str(part))
    })
}
