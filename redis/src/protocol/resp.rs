//! Where one RESP2 reply ends in a byte buffer, so that a front end reading several servers'
//! sockets without blocking knows when a reply is complete (and where the next begins).

/// The length of the first complete RESP2 value in `buf`: `Ok(None)` if it is not complete yet,
/// `Err(())` if the bytes are not RESP2.
pub(crate) fn value_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    value_end(buf, 0)
}

fn value_end(buf: &[u8], at: usize) -> Result<Option<usize>, ()> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some(line_end) = line_end(buf, at + 1) else {
        return Ok(None);
    };
    let after_line = line_end + 2;
    match kind {
        b'+' | b'-' | b':' => Ok(Some(after_line)),
        b'$' => match number(&buf[at + 1..line_end])? {
            -1 => Ok(Some(after_line)),
            len if len >= 0 => {
                let end = after_line + usize::try_from(len).map_err(|_| ())? + 2;
                if buf.len() < end {
                    Ok(None)
                } else if &buf[end - 2..end] == b"\r\n" {
                    Ok(Some(end))
                } else {
                    Err(())
                }
            }
            _ => Err(()),
        },
        b'*' => match number(&buf[at + 1..line_end])? {
            -1 => Ok(Some(after_line)),
            count if count >= 0 => {
                let mut end = after_line;
                for _ in 0..count {
                    match value_end(buf, end)? {
                        Some(next) => end = next,
                        None => return Ok(None),
                    }
                }
                Ok(Some(end))
            }
            _ => Err(()),
        },
        _ => Err(()),
    }
}

/// The index of the `\r` of the first `\r\n` at or after `from`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map(|offset| from + offset)
}

fn number(digits: &[u8]) -> Result<i64, ()> {
    core::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_values() {
        for value in [
            &b"+OK\r\n"[..],
            b"-NOSCRIPT No matching script\r\n",
            b":42\r\n",
            b"$5\r\nhe\r\nl\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n:1\r\n$3\r\nabc\r\n",
            b"*2\r\n*1\r\n:1\r\n$-1\r\n",
        ] {
            assert_eq!(value_len(value), Ok(Some(value.len())), "{value:?}");
            // Every proper prefix is incomplete, never a shorter value.
            for cut in 0..value.len() {
                assert_eq!(value_len(&value[..cut]), Ok(None), "{value:?} cut at {cut}");
            }
            // A value followed by the next one: only the first is measured.
            let two = [value, b":7\r\n"].concat();
            assert_eq!(value_len(&two), Ok(Some(value.len())));
        }
    }

    #[test]
    fn malformed() {
        assert_eq!(value_len(b"?x\r\n"), Err(()));
        assert_eq!(value_len(b"$x\r\n"), Err(()));
        assert_eq!(value_len(b"$2\r\nabcd"), Err(()));
        assert_eq!(value_len(b"*-2\r\n"), Err(()));
    }
}
