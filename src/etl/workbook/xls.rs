//! The legacy binary format (BIFF in a CFB container). calamine reserves memory for the cell
//! count a sheet's DIMENSIONS record declares before reading a single cell, so a 5 KB file
//! declaring 4,294,967,295 × 65,535 cells aborted the process. The declared dimensions are
//! only a hint (calamine sizes the sheet from the cells it reads), so they are zeroed in a
//! copy of the workbook stream before calamine sees it.

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use super::WorkbookError;

const DIMENSIONS: u16 = 0x0200;
/// Everything after FILEPASS is encrypted: record payloads are not what they seem.
const FILEPASS: u16 = 0x002F;

/// Returns the workbook with every DIMENSIONS record's payload zeroed.
pub(super) fn neutralise_dimensions(bytes: Vec<u8>) -> Result<Vec<u8>, WorkbookError> {
    let corrupt = |e: &dyn std::fmt::Display| WorkbookError::Corrupt(e.to_string());
    let mut cfb = cfb::CompoundFile::open(Cursor::new(bytes)).map_err(|e| corrupt(&e))?;
    let path = ["/Workbook", "/Book"]
        .into_iter()
        .find(|p| cfb.is_stream(p))
        .ok_or_else(|| WorkbookError::Corrupt("no Workbook stream in the compound file".into()))?;
    let mut stream = cfb.open_stream(path).map_err(|e| corrupt(&e))?;
    let mut data = Vec::new();
    stream.read_to_end(&mut data).map_err(|e| corrupt(&e))?;
    let mut patches = Vec::new();
    let mut at = 0usize;
    while at + 4 <= data.len() {
        let typ = u16::from_le_bytes([data[at], data[at + 1]]);
        let len = u16::from_le_bytes([data[at + 2], data[at + 3]]) as usize;
        let body = at + 4;
        if typ == FILEPASS {
            break;
        }
        if typ == DIMENSIONS && body + len <= data.len() {
            patches.push((body, len));
        }
        at = body + len;
    }
    for (offset, len) in patches {
        stream
            .seek(SeekFrom::Start(offset as u64))
            .map_err(|e| corrupt(&e))?;
        stream.write_all(&vec![0u8; len]).map_err(|e| corrupt(&e))?;
    }
    stream.flush().map_err(|e| corrupt(&e))?;
    drop(stream);
    cfb.flush().map_err(|e| corrupt(&e))?;
    Ok(cfb.into_inner().into_inner())
}
