//! `{% generation %}…{% endgeneration %}`: the markers TRL's training templates put around
//! what the assistant writes, so that SFT can train on those tokens alone
//! (`assistant_only_loss`). transformers implements them as a jinja2 extension recording where
//! each block's output lands; minijinja has no custom tags, so each marker becomes a filter
//! block (same tag, same whitespace control, so trim_blocks / lstrip_blocks / `-` act as on the
//! original) whose filter wraps its output in two private-use characters, found and removed
//! after rendering.

/// Wraps a generation block's output (U+E000 … U+E001, which no template or tokenizer emits).
pub(super) const START: char = '\u{E000}';
pub(super) const END: char = '\u{E001}';
pub(super) const FILTER: &str = "__cada_generation";

pub(super) fn wrap(s: String) -> String {
    format!("{START}{s}{END}")
}

/// The template with `{% generation %}` / `{% endgeneration %}` (any whitespace control)
/// turned into `{% filter __cada_generation %}` / `{% endfilter %}`; the count of blocks found.
pub(super) fn rewrite_markers(template: &str) -> (String, usize) {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut blocks = 0;
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open]);
        let tag = &rest[open..];
        let Some(close) = tag.find("%}") else {
            out.push_str(tag);
            return (out, blocks);
        };
        let inner = &tag[2..close];
        let (lead, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, trail) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[b.len()..]),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => {
                blocks += 1;
                out.push_str(&format!("{{%{lead} filter {FILTER} {trail}%}}"));
            }
            "endgeneration" => out.push_str(&format!("{{%{lead} endfilter {trail}%}}")),
            _ => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    (out, blocks)
}

/// Removes the markers: the text, and each generation block's span in characters (Unicode
/// scalar values, as Python's string indices and the tokenizer's char offsets count).
pub(super) fn take_spans(text: &str) -> (String, Vec<(usize, usize)>) {
    let mut out = String::with_capacity(text.len());
    let mut spans = Vec::new();
    let (mut chars, mut open) = (0usize, Vec::new());
    for c in text.chars() {
        match c {
            START => open.push(chars),
            END => {
                let start = open.pop().unwrap_or(chars);
                // a block inside another is inside its span already
                if open.is_empty() {
                    spans.push((start, chars));
                }
            }
            c => {
                out.push(c);
                chars += 1;
            }
        }
    }
    (out, spans)
}

/// transformers' assistant mask: 1 for every token whose char offsets overlap a span.
pub fn token_mask(offsets: &[(usize, usize)], spans: &[(usize, usize)]) -> Vec<bool> {
    let mut mask = vec![false; offsets.len()];
    let mut s = 0;
    for (i, &(start, end)) in offsets.iter().enumerate() {
        while s < spans.len() && start >= spans[s].1 {
            s += 1;
        }
        if s == spans.len() {
            break;
        }
        mask[i] = end > spans[s].0;
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_keep_their_whitespace_control() {
        let (t, n) = rewrite_markers("a{%- generation %}b{% endgeneration -%} {%+ generation+%}");
        assert_eq!(n, 2);
        assert_eq!(
            t,
            "a{%- filter __cada_generation %}b{% endfilter -%} {%+ filter __cada_generation +%}"
        );
        assert_eq!(
            rewrite_markers("{% if x %}{{ y }}{% endif %}").0,
            "{% if x %}{{ y }}{% endif %}"
        );
    }

    #[test]
    fn spans_are_in_chars_and_masks_overlap() {
        let (text, spans) = take_spans("ü\u{E000}ab\u{E001}c\u{E000}d\u{E001}");
        assert_eq!(text, "üabcd");
        assert_eq!(spans, vec![(1, 3), (4, 5)]);
        // tokens "üa", "b", "c", "d": the first overlaps the span's start
        assert_eq!(
            token_mask(&[(0, 2), (2, 3), (3, 4), (4, 5)], &spans),
            vec![true, true, false, true]
        );
    }
}
