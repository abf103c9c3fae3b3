//! The chunked transfer coding walked incrementally across segment boundaries, storing no body bytes.
use super::ParseError;

/// Progress of a [`ChunkedDecoder`] over one input slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStep {
    /// The body (last chunk and trailers) ended after this many bytes of the input.
    Done(usize),
    /// All input consumed, the body continues.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Walks chunked framing incrementally without storing data; counts nothing but where the body ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    size_digits: u8,
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    fn after_size(&mut self) -> ChunkState {
        let size = std::mem::take(&mut self.size);
        self.size_digits = 0;
        if size == 0 {
            ChunkState::TrailerLineStart
        } else {
            ChunkState::Data(size)
        }
    }

    /// Consumes the next bytes of the body.
    pub fn feed(&mut self, input: &[u8]) -> Result<ChunkStep, ParseError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                ChunkState::Done => return Ok(ChunkStep::Done(i)),
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.size_digits >= 15 {
                            return Err(ParseError::BadChunk);
                        }
                        self.size_digits += 1;
                        self.size =
                            self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                        ChunkState::Size
                    }
                    b';' | b' ' | b'\t' if self.size_digits > 0 => ChunkState::Ext,
                    b'\r' if self.size_digits > 0 => ChunkState::SizeLf,
                    b'\n' if self.size_digits > 0 => self.after_size(),
                    _ => return Err(ParseError::BadChunk),
                },
                ChunkState::Ext => match b {
                    b'\r' => ChunkState::SizeLf,
                    b'\n' => self.after_size(),
                    _ => ChunkState::Ext,
                },
                ChunkState::SizeLf => match b {
                    b'\n' => self.after_size(),
                    _ => return Err(ParseError::BadChunk),
                },
                ChunkState::Data(n) => {
                    let take = n.min((input.len() - i) as u64);
                    i += take as usize;
                    let left = n - take;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left)
                    };
                    continue;
                }
                ChunkState::DataCr => match b {
                    b'\r' => ChunkState::DataLf,
                    b'\n' => ChunkState::Size,
                    _ => return Err(ParseError::BadChunk),
                },
                ChunkState::DataLf => match b {
                    b'\n' => ChunkState::Size,
                    _ => return Err(ParseError::BadChunk),
                },
                ChunkState::TrailerLineStart => match b {
                    b'\r' => ChunkState::EndLf,
                    b'\n' => ChunkState::Done,
                    _ => ChunkState::TrailerLine,
                },
                ChunkState::TrailerLine => match b {
                    b'\r' => ChunkState::TrailerLf,
                    b'\n' => ChunkState::TrailerLineStart,
                    _ => ChunkState::TrailerLine,
                },
                ChunkState::TrailerLf => match b {
                    b'\n' => ChunkState::TrailerLineStart,
                    _ => return Err(ParseError::BadChunk),
                },
                ChunkState::EndLf => match b {
                    b'\n' => ChunkState::Done,
                    _ => return Err(ParseError::BadChunk),
                },
            };
            i += 1;
        }
        if self.state == ChunkState::Done {
            return Ok(ChunkStep::Done(i));
        }
        Ok(ChunkStep::NeedMore)
    }
}
