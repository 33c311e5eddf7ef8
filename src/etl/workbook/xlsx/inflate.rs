//! The inflating thread, and the contiguous window over what it has sent so far.

use std::io::{Cursor, Read};
use std::sync::mpsc;

use super::*;

/// The inflating thread: sends the part's bytes in chunks, then closes the channel.
pub(super) fn inflate(
    bytes: &[u8],
    path: &str,
    tx: mpsc::SyncSender<Result<Vec<u8>, String>>,
    back: mpsc::Receiver<Vec<u8>>,
) {
    let mut zip = match zip::ZipArchive::new(Cursor::new(bytes)) {
        Ok(z) => z,
        Err(e) => {
            let _ = tx.send(Err(e.to_string()));
            return;
        }
    };
    let mut file = match zip.by_name(path) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.send(Err(e.to_string()));
            return;
        }
    };
    loop {
        let mut buf = back
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        buf.clear();
        match (&mut file).take(CHUNK as u64).read_to_end(&mut buf) {
            Ok(0) => return,
            Ok(_) => {
                if tx.send(Ok(buf)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        }
    }
}

/// The inflated XML, one contiguous window over the chunks received so far.
pub(super) struct Source {
    pub(super) rx: mpsc::Receiver<Result<Vec<u8>, String>>,
    pub(super) back: mpsc::Sender<Vec<u8>>,
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
    pub(super) done: bool,
}

impl Source {
    /// Appends the next chunk (dropping what was consumed); false at the end of the part.
    pub(super) fn more(&mut self) -> Result<bool, WorkbookError> {
        if self.done {
            return Ok(false);
        }
        match self.rx.recv() {
            Ok(Ok(chunk)) => {
                self.buf.drain(..self.pos);
                self.pos = 0;
                self.buf.extend_from_slice(&chunk);
                let _ = self.back.send(chunk);
                Ok(true)
            }
            Ok(Err(e)) => Err(corrupt(e)),
            Err(_) => {
                self.done = true;
                Ok(false)
            }
        }
    }
}
