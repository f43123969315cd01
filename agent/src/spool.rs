//! Output spools: every chunk a script prints is appended to a file in the state directory
//! before it is sent, so output survives a lost connection and an agent restart.
//!
//! A spool is a sequence of records `[stream: u8][len: u32 LE][len bytes]`, one per chunk
//! (at most 64 KiB). The chunking is fixed when the record is written, so replaying a spool
//! always produces the same `(stream, seq, bytes)` frames, and the server can drop the ones it
//! already has. Connections read spools from the start; the agent never keeps output in
//! memory beyond one chunk. A spool is deleted when the server acknowledges the run's answer.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use outpost_protocol::{CommandId, OutputStream};

const HEADER: usize = 5;

/// Where a run's spool lives.
pub fn path(dir: &Path, id: CommandId) -> PathBuf {
    dir.join(format!("{id}.out"))
}

/// Appends chunks to a spool.
pub struct SpoolWriter {
    file: File,
    /// Bytes of whole records written.
    len: u64,
}

impl SpoolWriter {
    /// Creates (or truncates) a run's spool.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Self { file, len: 0 })
    }

    /// Opens a spool to append to it (a library run's build log, written by two steps).
    pub fn open_append(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }

    /// Appends one chunk in a single write, so a reader sees whole records or a short tail. A
    /// write that fails part-way (the disk filled up) is cut off again, so that the spool
    /// holds whole records only: a later record written after a torn one would be read with
    /// the torn one's length, and the output would be garbled from there on.
    pub fn append(&mut self, stream: OutputStream, bytes: &[u8]) -> std::io::Result<()> {
        debug_assert!(bytes.len() <= outpost_protocol::limits::MAX_OUTPUT_CHUNK);
        let mut record = Vec::with_capacity(HEADER + bytes.len());
        record.push(match stream {
            OutputStream::Stdout => 0,
            OutputStream::Stderr => 1,
        });
        record.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        record.extend_from_slice(bytes);
        if let Err(err) = self.file.write_all(&record) {
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::Start(self.len));
            return Err(err);
        }
        self.len += record.len() as u64;
        Ok(())
    }
}

/// Reads a spool from the start, numbering chunks per stream.
pub struct SpoolReader {
    file: File,
    offset: u64,
    seq: [u64; 2],
}

/// One chunk read back.
pub struct Chunk {
    /// Its stream.
    pub stream: OutputStream,
    /// Its number within the stream.
    pub seq: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl SpoolReader {
    /// Opens a spool; `None` when the run has none.
    pub fn open(path: &Path) -> Option<Self> {
        let file = File::open(path).ok()?;
        Some(Self {
            file,
            offset: 0,
            seq: [0, 0],
        })
    }

    /// The next whole record, or `None` at the current end (more may come while the run goes
    /// on). A corrupt record ends the spool.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<Chunk>> {
        self.file.seek(SeekFrom::Start(self.offset))?;
        let mut header = [0u8; HEADER];
        if !read_full(&mut self.file, &mut header)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let stream = match header[0] {
            0 => OutputStream::Stdout,
            1 => OutputStream::Stderr,
            _ => return Ok(None),
        };
        if len > outpost_protocol::limits::MAX_OUTPUT_CHUNK {
            return Ok(None);
        }
        let mut bytes = vec![0u8; len];
        if !read_full(&mut self.file, &mut bytes)? {
            return Ok(None);
        }
        self.offset += (HEADER + len) as u64;
        let index = usize::from(stream == OutputStream::Stderr);
        let seq = self.seq[index];
        self.seq[index] += 1;
        Ok(Some(Chunk { stream, seq, bytes }))
    }
}

/// Fills `buf` completely; `false` if the file ends first (a record still being written).
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => return Ok(false),
            n => filled += n,
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_come_back_in_order_with_per_stream_numbers() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("x.out");
        let mut w = SpoolWriter::create(&p).expect("create");
        w.append(OutputStream::Stdout, b"a").expect("append");
        w.append(OutputStream::Stderr, &[0xff, 0]).expect("append");
        w.append(OutputStream::Stdout, b"").expect("append");
        let mut r = SpoolReader::open(&p).expect("open");
        let got: Vec<_> = std::iter::from_fn(|| r.next_chunk().expect("read"))
            .map(|c| (c.stream, c.seq, c.bytes))
            .collect();
        assert_eq!(
            got,
            vec![
                (OutputStream::Stdout, 0, b"a".to_vec()),
                (OutputStream::Stderr, 0, vec![0xff, 0]),
                (OutputStream::Stdout, 1, vec![]),
            ]
        );
        // More appended later is picked up where the reader stopped.
        w.append(OutputStream::Stdout, b"late").expect("append");
        let c = r.next_chunk().expect("read").expect("chunk");
        assert_eq!((c.seq, c.bytes), (2, b"late".to_vec()));
    }

    #[test]
    fn a_half_written_record_is_not_read_until_complete() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("x.out");
        let mut f = File::create(&p).expect("create");
        f.write_all(&[0, 4, 0, 0, 0, b'a', b'b']).expect("write");
        let mut r = SpoolReader::open(&p).expect("open");
        assert!(r.next_chunk().expect("read").is_none());
        f.write_all(b"cd").expect("write");
        assert_eq!(r.next_chunk().expect("read").expect("chunk").bytes, b"abcd");
    }
}
