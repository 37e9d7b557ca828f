//! The multiprocess directory at master start.

use std::fs;
use std::io;
use std::path::Path;

/// Makes `dir` if needed and removes the files an earlier run left (`*.db`,
/// native histograms' `*.ndb`, exit notes).
pub fn prepare(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if (name.ends_with(".db") || name.ends_with(".ndb") || name.ends_with(".note"))
            && entry.file_type()?.is_file()
        {
            fs::remove_file(entry.path())?;
        }
    }
    let probe = dir.join(".write-test");
    fs::write(&probe, b"")?;
    fs::remove_file(probe)
}
