//! What the hand-drawn SVGs (heat map, graph view) and the HTML report share: text
//! made safe to put inside markup.

/// `s` with the characters that would end a tag, an attribute or an entity escaped.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
