//! The master's side of the directory: who owns it (`directory`), the
//! master's own series (`meter`), and the folding of the files of processes
//! that exited into archives (`archive`).

pub mod archive;
pub mod directory;
pub mod label_cap;
pub mod meter;
