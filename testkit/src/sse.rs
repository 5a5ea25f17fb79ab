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

/// A block with data and the read of the body (counted from 0) in which it was complete: more
/// than one read over a reply is what "streamed event by event" looks like to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrived {
    pub block: Block,
    pub read: usize,
}

/// Reads an SSE body to its end as it arrives; blocks without data (keep-alives) are skipped.
pub fn read_blocks(mut body: impl std::io::Read) -> std::io::Result<Vec<Arrived>> {
    let mut arrived = Vec::new();
    let mut pending = String::new();
    let mut buffer = [0u8; 16 * 1024];
    for read in 0.. {
        let n = body.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        pending.push_str(&String::from_utf8_lossy(&buffer[..n]));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let block = parse_block(&block);
            if !block.data.is_empty() {
                arrived.push(Arrived { block, read });
            }
        }
    }
    Ok(arrived)
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

    /// A reader that hands out one piece per read, as a socket does.
    struct Pieces(Vec<&'static str>);

    impl std::io::Read for Pieces {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let piece = self.0.remove(0).as_bytes();
            buffer[..piece.len()].copy_from_slice(piece);
            Ok(piece.len())
        }
    }

    #[test]
    fn blocks_are_numbered_by_the_read_that_completed_them() {
        let body = Pieces(vec![
            "event: a\ndata: 1\n\n: ping\n\nevent: b\nda",
            "ta: 2\n\n",
        ]);
        let arrived = read_blocks(body).expect("read");
        let seen: Vec<(&str, &str, usize)> = arrived
            .iter()
            .map(|a| (a.block.event.as_str(), a.block.data.as_str(), a.read))
            .collect();
        assert_eq!(seen, [("a", "1", 0), ("b", "2", 1)]);
    }
}
