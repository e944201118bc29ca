//! Merging several indexes as kopia's merged index does (§9.6): per content ID the
//! [`is_greater`] entry wins, whatever the order of the indexes. Hiding deleted entries under the
//! deletion watermark is left to the caller, since it applies to the merged winner only.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::{Index, IndexEntry, is_greater};
use crate::content_id::ContentId;

/// The winning entry for `id` among `indexes`.
pub fn lookup<'a>(
    indexes: impl IntoIterator<Item = &'a Index>,
    id: &ContentId,
) -> Option<IndexEntry> {
    indexes
        .into_iter()
        .filter_map(|ix| ix.lookup(id))
        .reduce(|best, e| if is_greater(&e, &best) { e } else { best })
}

/// K-way merge of entry streams that are each sorted by content ID (such as [`Index::iter`]),
/// yielding one winning entry per content ID, in order.
pub fn merge_sorted<I: Iterator<Item = IndexEntry>>(sources: Vec<I>) -> MergeSorted<I> {
    let mut merged = MergeSorted {
        sources,
        heads: BinaryHeap::new(),
    };
    for i in 0..merged.sources.len() {
        merged.advance(i);
    }
    merged
}

pub struct MergeSorted<I> {
    sources: Vec<I>,
    heads: BinaryHeap<Reverse<Head>>,
}

struct Head {
    entry: IndexEntry,
    source: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.entry.content_id, self.source).cmp(&(other.entry.content_id, other.source))
    }
}

impl<I: Iterator<Item = IndexEntry>> MergeSorted<I> {
    fn advance(&mut self, source: usize) {
        if let Some(entry) = self.sources[source].next() {
            self.heads.push(Reverse(Head { entry, source }));
        }
    }
}

impl<I: Iterator<Item = IndexEntry>> Iterator for MergeSorted<I> {
    type Item = IndexEntry;

    fn next(&mut self) -> Option<IndexEntry> {
        let Reverse(Head {
            entry: mut best,
            source,
        }) = self.heads.pop()?;
        self.advance(source);
        while let Some(Reverse(head)) = self.heads.peek() {
            if head.entry.content_id != best.content_id {
                break;
            }
            let Reverse(Head { entry, source }) = self.heads.pop().expect("peeked");
            if is_greater(&entry, &best) {
                best = entry;
            }
            self.advance(source);
        }
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::super::IndexBuilder;
    use super::super::tests::entry;
    use super::*;

    fn index(entries: &[IndexEntry]) -> Index {
        let mut b = IndexBuilder::new();
        for e in entries {
            b.add(e.clone());
        }
        Index::parse(b.build_v2().unwrap(), 27).unwrap()
    }

    fn kopia_merged_test_indexes() -> [Index; 3] {
        [
            index(&[
                entry("aabbcc", 1, "xx", 11, false),
                entry("ddeeff", 1, "xx", 111, false),
                entry("z010203", 1, "xx", 111, false),
                entry("de1e1e", 4, "xx", 111, false),
            ]),
            index(&[
                entry("aabbcc", 3, "yy", 33, false),
                entry("xaabbcc", 1, "xx", 111, false),
                entry("de1e1e", 4, "xx", 222, true),
            ]),
            index(&[
                entry("aabbcc", 2, "zz", 22, false),
                entry("ddeeff", 1, "zz", 222, false),
                entry("k010203", 1, "xx", 111, false),
                entry("k020304", 1, "xx", 111, false),
            ]),
        ]
    }

    #[test]
    fn kopia_merged_vectors() {
        let ix = kopia_merged_test_indexes();
        assert_eq!(ix.iter().map(Index::len).sum::<usize>(), 11);
        let id = |s| ContentId::parse(s).unwrap();
        assert_eq!(lookup(&ix, &id("aabbcc")).unwrap().pack_offset, 33);
        assert!(!lookup(&ix, &id("de1e1e")).unwrap().deleted);
        assert_eq!(lookup(&ix, &id("000000")), None);

        let merged: Vec<IndexEntry> = merge_sorted(ix.iter().map(|i| i.iter()).collect()).collect();
        let ids: Vec<String> = merged.iter().map(|e| e.content_id.to_string()).collect();
        assert_eq!(
            ids,
            [
                "aabbcc", "ddeeff", "de1e1e", "k010203", "k020304", "xaabbcc", "z010203"
            ]
        );
        assert_eq!(merged[0].pack_offset, 33);
        assert_eq!(&*merged[1].pack_blob_id, "zz");
        assert!(!merged[2].deleted);
        assert_eq!(
            merge_sorted(Vec::<std::vec::IntoIter<IndexEntry>>::new()).count(),
            0
        );
    }

    #[test]
    fn merge_is_independent_of_order() {
        let i1 = index(&[
            entry("aabbcc", 1, "xx", 11, false),
            entry("bbccdd", 1, "xx", 11, false),
            entry("ccddee", 1, "ff", 11, true),
        ]);
        let i2 = index(&[
            entry("aabbcc", 1, "yy", 33, false),
            entry("bbccdd", 1, "yy", 11, true),
            entry("ccddee", 1, "gg", 11, true),
        ]);
        let i3 = index(&[
            entry("aabbcc", 1, "zz", 22, false),
            entry("bbccdd", 1, "zz", 11, true),
            entry("ccddee", 1, "hh", 11, true),
        ]);
        let all = [&i1, &i2, &i3];
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in orders {
            let ix: Vec<&Index> = order.iter().map(|&i| all[i]).collect();
            let pack = |s| {
                lookup(ix.iter().copied(), &ContentId::parse(s).unwrap())
                    .unwrap()
                    .pack_blob_id
            };
            assert_eq!(&*pack("aabbcc"), "zz", "equal times: greatest pack ID");
            assert_eq!(&*pack("bbccdd"), "xx", "equal times: live beats deleted");
            assert_eq!(&*pack("ccddee"), "hh", "all deleted: greatest pack ID");
            let merged: Vec<String> = merge_sorted(ix.iter().map(|i| i.iter()).collect())
                .map(|e| e.pack_blob_id.to_string())
                .collect();
            assert_eq!(merged, ["zz", "xx", "hh"]);
        }
    }
}
