//! The command journal: what this agent accepted, and what it answered until the server
//! acknowledged the answer (CONTRACT.md §2, delivery guarantee 3).
//!
//! It is an append-only file of JSON lines, fsynced after every record, in the state
//! directory. A record is written *before* the matching frame is sent: `accepted` before the
//! `ack`, `response` before the `response` frame. So after a crash the journal knows every
//! command the server may think was received, and:
//! - a command accepted but never answered was interrupted, and is answered as such;
//! - a command answered but not acknowledged is answered again on reconnect;
//! - a command id seen again is never run twice.
//!
//! The file is rewritten compactly at start-up and whenever it has grown by many records.
//! Acknowledged ids are remembered (the most recent [`REMEMBER_ACKED`]) so that even a very
//! late duplicate is recognised.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use outpost_protocol::{CommandId, Response, codes};
use serde::{Deserialize, Serialize};

/// Acknowledged command ids kept for duplicate detection.
pub const REMEMBER_ACKED: usize = 10_000;
/// Records appended before the file is compacted.
const COMPACT_AFTER: usize = 50_000;

/// What the journal knows about a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// Accepted, running or about to run.
    Accepted,
    /// Answered; the server has not acknowledged the answer yet.
    Answered(Response),
    /// Answered and acknowledged.
    Acked,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Accepted(CommandId),
    Response(Response),
    Acked(CommandId),
}

/// The journal file and its in-memory index.
pub struct Journal {
    path: PathBuf,
    file: File,
    entries: HashMap<CommandId, Entry>,
    acked: VecDeque<CommandId>,
    appended: usize,
}

impl Journal {
    /// Opens the journal in `dir`, answering every command a previous run left unanswered as
    /// interrupted. Returns the journal and how many commands were interrupted.
    pub fn open(dir: &Path) -> std::io::Result<(Self, usize)> {
        let path = dir.join("journal.jsonl");
        let (mut entries, acked) = load(&path)?;
        let mut interrupted = 0;
        for (id, entry) in entries.iter_mut() {
            if *entry == Entry::Accepted {
                interrupted += 1;
                *entry = Entry::Answered(Response::failed(
                    *id,
                    codes::INTERRUPTED,
                    "the agent stopped while the command was running",
                ));
            }
        }
        let file = rewrite(&path, &entries, &acked)?;
        Ok((
            Self {
                path,
                file,
                entries,
                acked,
                appended: 0,
            },
            interrupted,
        ))
    }

    /// What is known about a command.
    pub fn get(&self, id: &CommandId) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Records that a command was accepted. Call before acknowledging it.
    pub fn accept(&mut self, id: CommandId) -> std::io::Result<()> {
        self.append(Record::Accepted(id))
    }

    /// Records a command's answer. Call before sending it.
    pub fn answer(&mut self, response: Response) -> std::io::Result<()> {
        self.append(Record::Response(response))
    }

    /// Records that the server stored the answer; it will not be sent again.
    pub fn acked(&mut self, id: CommandId) -> std::io::Result<()> {
        if matches!(self.entries.get(&id), Some(Entry::Answered(_))) {
            self.append(Record::Acked(id))?;
        }
        Ok(())
    }

    /// Commands the server may still need something for, oldest first: running ones (their
    /// output) and answered ones not yet acknowledged (their output and answer).
    pub fn unfinished(&self) -> Vec<(CommandId, Option<Response>)> {
        let mut out: Vec<(CommandId, Option<Response>)> = self
            .entries
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Accepted => Some((*id, None)),
                Entry::Answered(r) => Some((*id, Some(r.clone()))),
                Entry::Acked => None,
            })
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// Appends a record and syncs it. A write that fails part-way (a full disk) is cut off
    /// again: left in place, the next record would be appended to the torn line and both would
    /// be unreadable at the next start, losing a record that had been written whole.
    fn append(&mut self, record: Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        let before = self.file.metadata()?.len();
        if let Err(err) = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
        {
            let _ = self.file.set_len(before);
            return Err(err);
        }
        apply(&mut self.entries, &mut self.acked, record);
        self.appended += 1;
        if self.appended >= COMPACT_AFTER {
            self.file = rewrite(&self.path, &self.entries, &self.acked)?;
            self.appended = 0;
        }
        Ok(())
    }
}

/// Commands the journal in `dir` shows as accepted and never answered: what was running when
/// the agent that wrote it stopped. Reads without changing anything (the supervisor calls it
/// while no agent runs); an unreadable journal gives none.
pub fn unanswered(dir: &Path) -> Vec<CommandId> {
    let Ok((entries, _)) = load(&dir.join("journal.jsonl")) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter(|(_, e)| *e == Entry::Accepted)
        .map(|(id, _)| id)
        .collect()
}

type Loaded = (HashMap<CommandId, Entry>, VecDeque<CommandId>);

/// Reads the journal file (none: empty).
fn load(path: &Path) -> std::io::Result<Loaded> {
    let mut entries = HashMap::new();
    let mut acked = VecDeque::new();
    if let Ok(file) = File::open(path) {
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(&line) {
                Ok(record) => apply(&mut entries, &mut acked, record),
                // A torn last line from a crash mid-write: everything before it stands.
                Err(err) => {
                    tracing::warn!(line = n + 1, error = %err, "skipping unreadable journal record")
                }
            }
        }
    }
    Ok((entries, acked))
}

fn apply(entries: &mut HashMap<CommandId, Entry>, acked: &mut VecDeque<CommandId>, record: Record) {
    match record {
        Record::Accepted(id) => {
            entries.entry(id).or_insert(Entry::Accepted);
        }
        Record::Response(r) => {
            entries.insert(r.command_id, Entry::Answered(r));
        }
        Record::Acked(id) => {
            entries.insert(id, Entry::Acked);
            acked.push_back(id);
            while acked.len() > REMEMBER_ACKED {
                if let Some(old) = acked.pop_front() {
                    entries.remove(&old);
                }
            }
        }
    }
}

/// Writes the current state to a new file and atomically replaces the old one.
fn rewrite(
    path: &Path,
    entries: &HashMap<CommandId, Entry>,
    acked: &VecDeque<CommandId>,
) -> std::io::Result<File> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        let mut write = |record: &Record| -> std::io::Result<()> {
            serde_json::to_writer(&mut out, record)?;
            out.write_all(b"\n")
        };
        for id in acked {
            write(&Record::Acked(*id))?;
        }
        for (id, entry) in entries {
            match entry {
                Entry::Accepted => write(&Record::Accepted(*id))?,
                Entry::Answered(r) => write(&Record::Response(r.clone()))?,
                Entry::Acked => {}
            }
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> CommandId {
        uuid::Uuid::now_v7()
    }

    #[test]
    fn survives_reopen_and_interrupts_unanswered() {
        let dir = tempfile::tempdir().expect("tmp");
        let (running, answered, done) = (id(), id(), id());
        {
            let (mut j, n) = Journal::open(dir.path()).expect("open");
            assert_eq!(n, 0);
            for c in [running, answered, done] {
                j.accept(c).expect("accept");
            }
            j.answer(Response::ok(answered, serde_json::json!({"pong": true})))
                .expect("answer");
            j.answer(Response::ok(done, serde_json::Value::Null))
                .expect("answer");
            j.acked(done).expect("ack");
        }
        // What the supervisor and the next agent kill before the journal is reopened.
        assert_eq!(unanswered(dir.path()), vec![running]);
        assert_eq!(
            unanswered(dir.path()),
            vec![running],
            "reading changed nothing"
        );
        let (j, interrupted) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(interrupted, 1);
        assert_eq!(unanswered(dir.path()), Vec::<CommandId>::new());
        match j.get(&running) {
            Some(Entry::Answered(r)) => {
                assert!(!r.success);
                assert_eq!(
                    r.error.as_ref().map(|e| e.code.as_str()),
                    Some(codes::INTERRUPTED)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(j.get(&answered), Some(Entry::Answered(r)) if r.success));
        assert_eq!(j.get(&done), Some(&Entry::Acked));
        assert_eq!(j.unfinished().len(), 2);
        assert!(j.unfinished().iter().all(|(_, r)| r.is_some()));
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = id();
        {
            let (mut j, _) = Journal::open(dir.path()).expect("open");
            j.accept(c).expect("accept");
        }
        let path = dir.path().join("journal.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"response\":{\"comm").expect("write");
        drop(f);
        let (j, interrupted) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(interrupted, 1);
        assert!(matches!(j.get(&c), Some(Entry::Answered(_))));
    }

    #[test]
    fn acked_ids_are_remembered_but_bounded() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut j, _) = Journal::open(dir.path()).expect("open");
        let first = id();
        j.accept(first).expect("accept");
        j.answer(Response::ok(first, serde_json::Value::Null))
            .expect("answer");
        j.acked(first).expect("ack");
        assert_eq!(j.get(&first), Some(&Entry::Acked));
        for _ in 0..REMEMBER_ACKED {
            let c = id();
            j.entries
                .insert(c, Entry::Answered(Response::ok(c, serde_json::Value::Null)));
            apply(&mut j.entries, &mut j.acked, Record::Acked(c));
        }
        assert_eq!(j.get(&first), None);
        assert_eq!(j.acked.len(), REMEMBER_ACKED);
    }
}
