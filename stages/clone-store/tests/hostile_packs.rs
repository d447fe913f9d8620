//! Packs that are well formed and hostile, read through the store as the processor
//! reads them.

use bytes::Bytes;
use codelupe_clone_store::{CloneStore, ReadError, MAX_PACK_OBJECT_BYTES};
use codelupe_testkit::packs::delta_bomb_pack;

#[tokio::test]
async fn a_delta_declaring_an_object_past_the_cap_is_refused_before_it_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let store = CloneStore::open(dir.path().join("store").to_str().unwrap()).unwrap();
    // A pack of a few KiB that asks for one MiB more than the cap.
    let bomb = delta_bomb_pack(MAX_PACK_OBJECT_BYTES / (1 << 20) + 1);
    assert!(bomb.len() < 8 << 10, "{} bytes", bomb.len());
    let reference = store.put_pack(Bytes::from(bomb)).await.unwrap();
    let unpacked = store
        .unpack_pack(&reference, &dir.path().join("bomb.git"))
        .await;
    match unpacked {
        Err(ReadError::Corrupt(why)) => assert!(why.contains("overly large object"), "{why}"),
        other => panic!("unpacked: {:?}", other.map(|r| r.path().to_path_buf())),
    }
    // Under the cap the same shape of pack is a plain repository.
    let fine = store
        .put_pack(Bytes::from(delta_bomb_pack(2)))
        .await
        .unwrap();
    let repo = store
        .unpack_pack(&fine, &dir.path().join("fine.git"))
        .await
        .unwrap();
    let blobs = repo.odb().unwrap();
    let mut sizes = Vec::new();
    blobs
        .foreach(|oid| {
            sizes.push(blobs.read_header(*oid).unwrap().0);
            true
        })
        .unwrap();
    sizes.sort();
    assert_eq!(sizes, [1 << 20, 2 << 20]);
}
