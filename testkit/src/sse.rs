//! Server-sent events as a test client reads them: one block (the text between two blank
//! lines) at a time.

/// What one SSE block says: its event name (`message` when none is given), its `data:` lines
/// joined, and how many comment lines (keep-alives) it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub event: String,
    pub data: String,
    pub comments: usize,
}

/// Parses one block; a block without `data:` has an empty `data`.
pub fn parse_block(block: &str) -> Block {
    let mut parsed = Block {
        event: "message".to_owned(),
        data: String::new(),
        comments: 0,
    };
    for line in block.lines() {
        if line.starts_with(':') {
            parsed.comments += 1;
        } else if let Some(name) = line.strip_prefix("event:") {
            parsed.event = name.trim().to_owned();
        } else if let Some(value) = line.strip_prefix("data:") {
            parsed.data.push_str(value.trim_start());
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_data_and_comments() {
        let block = parse_block(": keep-alive\nevent: delta\ndata: {\"text\":\"hi\"}\n\n");
        assert_eq!(block.event, "delta");
        assert_eq!(block.data, "{\"text\":\"hi\"}");
        assert_eq!(block.comments, 1);
        assert_eq!(parse_block("data: 1").event, "message");
        assert_eq!(parse_block(": ping").data, "");
    }
}
