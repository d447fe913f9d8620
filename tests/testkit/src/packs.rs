//! Hostile packfiles, written byte by byte as git lays them out: a delta a few bytes
//! long that declares (and, applied, fills) an object of any size.

use std::path::Path;
use std::process::Command;

use sha1::Digest as _;

const MIB: usize = 1 << 20;

/// Git's variable-length size: 7 bits a byte, low bits first.
fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A pack entry's header: its type and (inflated) size.
fn entry_header(kind: u8, size: usize, out: &mut Vec<u8>) {
    let mut byte = (kind << 4) | (size & 0x0f) as u8;
    let mut rest = size >> 4;
    while rest > 0 {
        out.push(byte | 0x80);
        byte = (rest & 0x7f) as u8;
        rest >>= 7;
    }
    out.push(byte);
}

/// An OFS_DELTA's distance back to its base, in that encoding (each byte after the
/// first stands for one more than its bits say).
fn base_distance(mut distance: usize, out: &mut Vec<u8>) {
    let mut bytes = vec![(distance & 0x7f) as u8];
    distance >>= 7;
    while distance > 0 {
        distance -= 1;
        bytes.push(0x80 | (distance & 0x7f) as u8);
        distance >>= 7;
    }
    bytes.reverse();
    out.extend(bytes);
}

fn deflated(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut z, data).unwrap();
    z.finish().unwrap()
}

/// A well-formed pack of two blobs: 1 MiB of zeros, and a delta on it of two bytes a
/// MiB that declares an object of `copies` MiB and fills it by copying the first blob
/// again and again. A few KiB of pack for any size.
pub fn delta_bomb_pack(copies: usize) -> Vec<u8> {
    let mut pack = b"PACK".to_vec();
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&2u32.to_be_bytes());
    let base_at = pack.len();
    entry_header(3, MIB, &mut pack);
    pack.extend(deflated(&vec![0; MIB]));
    let mut delta = Vec::new();
    varint(MIB, &mut delta);
    varint(copies * MIB, &mut delta);
    for _ in 0..copies {
        // Copy from offset 0 (no offset byte) 0x100000 bytes (the third size byte only).
        delta.extend_from_slice(&[0x80 | 0x40, 0x10]);
    }
    let delta_at = pack.len();
    entry_header(6, delta.len(), &mut pack);
    base_distance(delta_at - base_at, &mut pack);
    pack.extend(deflated(&delta));
    let trailer: [u8; 20] = sha1::Sha1::digest(&pack).into();
    pack.extend_from_slice(&trailer);
    pack
}

/// A bare repository at `path` whose one commit holds the two blobs of
/// [`delta_bomb_pack`] as `zeros.bin` and `bomb.bin`, stored as that pack, so that a
/// server reuses its delta when it sends them. Built with git's own tools (which
/// expand the delta once, here). Returns the commit id.
pub fn delta_bomb(path: &Path, copies: usize) -> String {
    std::fs::create_dir_all(path).unwrap();
    git(path, &["init", "--bare", "--quiet"], "");
    let pack = path.join("objects/pack/pack-bomb.pack");
    std::fs::write(&pack, delta_bomb_pack(copies)).unwrap();
    git(path, &["index-pack", pack.to_str().unwrap()], "");
    let objects = git(
        path,
        &["cat-file", "--batch-check", "--batch-all-objects"],
        "",
    );
    // "<oid> blob <size>" a line; the base is the 1 MiB one.
    let oid_of = |size: usize| {
        objects
            .lines()
            .find(|line| line.ends_with(&format!(" blob {size}")))
            .and_then(|line| line.split(' ').next())
            .unwrap()
            .to_string()
    };
    let tree = git(
        path,
        &["mktree"],
        &format!(
            "100644 blob {}\tbomb.bin\n100644 blob {}\tzeros.bin\n",
            oid_of(copies * MIB),
            oid_of(MIB)
        ),
    );
    let commit = git(path, &["commit-tree", tree.trim(), "-m", "bomb"], "");
    git(path, &["update-ref", "refs/heads/main", commit.trim()], "");
    git(path, &["symbolic-ref", "HEAD", "refs/heads/main"], "");
    commit.trim().to_string()
}

/// Runs git on the repository at `dir` with `input` on its standard input; its output.
fn git(dir: &Path, args: &[&str], input: &str) -> String {
    let mut command = Command::new("git");
    command
        .arg("--git-dir")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "bomb")
        .env("GIT_AUTHOR_EMAIL", "bomb@example.com")
        .env("GIT_COMMITTER_NAME", "bomb")
        .env("GIT_COMMITTER_EMAIL", "bomb@example.com");
    crate::stdout_given(&mut command, input.as_bytes())
}
