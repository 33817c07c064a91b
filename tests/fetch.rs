//! The export's fast reader ([`RowFetcher`]: plain selects, references translated on the
//! client through a cache) and verify's reader ([`TableReader`]: references translated
//! by the server with joins) give every row of every synced table the same identity and
//! the same values, on the fixture with a clinic workload and on the real OpenMRS dump.

mod common;

use std::collections::BTreeMap;

use common::{block_on, conn, generate, site, sources, Node, Source};
use ferry::bundle::{Identity, Value, ValueRef};
use ferry::capture::setup::stored_plan;
use ferry::export::fetch::{Recall, RowFetcher};
use ferry::export::refs::{RefCache, CACHE_ENTRIES};
use ferry::export::rows::TableReader;
use ferry::schema::Schema;
use mysql_async::prelude::*;

type Rows = BTreeMap<String, (Identity, Vec<Value>)>;

#[test]
fn fast_reader_equals_the_join_reader_on_every_table() {
    for source in sources() {
        let s = site("fetch", &source);
        if matches!(source, Source::Fixture) {
            generate(&s.url, 7, 30, 2, 4);
        }
        let node = Node::new("a", &s.url);
        node.ok(&["setup"]);
        let compared = block_on(async {
            let mut c = conn(&s.url).await;
            let db = ferry::db::DbUrl::parse(&s.url).unwrap().database;
            let plan = stored_plan(&mut c, &db).await.unwrap();
            let schema = Schema::read(&mut c, &db).await.unwrap();
            let mut cache = RefCache::default();
            let mut tables = 0;
            let mut rows = 0;
            for (table, _) in plan.synced() {
                let slow = TableReader::new(&plan, &schema, table);
                let fast = RowFetcher::new(&plan, &schema, table, &mut cache);
                assert_eq!(
                    slow.is_some(),
                    fast.is_some(),
                    "{}: {table} readable by one reader only",
                    source.name()
                );
                let (Some(slow), Some(fast)) = (slow, fast) else {
                    continue;
                };
                assert_eq!(slow.columns, fast.columns, "{table}");
                let mut want: Rows = BTreeMap::new();
                let found: Vec<mysql_async::Row> = c.exec(slow.select_all(), ()).await.unwrap();
                for r in found {
                    let (k, id, v) = slow.decode(&r).unwrap();
                    want.insert(k, (id, v));
                }
                let got: Rows = fast
                    .all(&mut c, &mut cache, &plan, &schema)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.key, (r.identity, r.values)))
                    .collect();
                assert_eq!(
                    got.len(),
                    want.len(),
                    "{}: {table} row count",
                    source.name()
                );
                for (k, w) in &want {
                    assert_eq!(got.get(k), Some(w), "{}: {table} row {k}", source.name());
                }
                tables += 1;
                rows += want.len();
            }
            (tables, rows, cache.fetched)
        });
        eprintln!(
            "{}: {} tables, {} rows equal; {} identities fetched into a cache of at most {CACHE_ENTRIES}",
            source.name(),
            compared.0,
            compared.1,
            compared.2
        );
        assert!(compared.0 > 30 && compared.1 > 100, "{compared:?}");
    }
}

/// Sealing decodes with the cache as it is and prepares a batch only at the first row
/// the cache cannot decode (`RowFetcher::decode_values`, references recalled from row to
/// row); from a cold cache that path must give the same rows as the join reader, and
/// must be taken.
#[test]
fn decoding_as_sealing_does_from_a_cold_cache_equals_the_join_reader() {
    let s = site("fetchcold", &Source::Fixture);
    generate(&s.url, 5, 20, 2, 3);
    let node = Node::new("a", &s.url);
    node.ok(&["setup"]);
    let (tables, retried) = block_on(async {
        let mut c = conn(&s.url).await;
        let db = ferry::db::DbUrl::parse(&s.url).unwrap().database;
        let plan = stored_plan(&mut c, &db).await.unwrap();
        let schema = Schema::read(&mut c, &db).await.unwrap();
        let mut cache = RefCache::default();
        let (mut tables, mut retried) = (0, 0);
        for (table, _) in plan.synced() {
            let slow = TableReader::new(&plan, &schema, table);
            let fast = RowFetcher::new(&plan, &schema, table, &mut cache);
            let (Some(slow), Some(fast)) = (slow, fast) else {
                continue;
            };
            let mut want: Rows = BTreeMap::new();
            let found: Vec<mysql_async::Row> = c.exec(slow.select_all(), ()).await.unwrap();
            for r in found {
                let (k, id, v) = slow.decode(&r).unwrap();
                want.insert(k, (id, v));
            }
            let raw: Vec<mysql_async::Row> = c.exec(fast.select_all(), ()).await.unwrap();
            let mut got: Rows = BTreeMap::new();
            for batch in raw.chunks(50) {
                fast.learn(&mut cache, batch);
                let mut prepared = false;
                let mut from = 0;
                // Passes over the batch as sealing makes them: rows decoded with one
                // recall while the cache stays as it is; prepared at the first miss.
                loop {
                    let mut missed = None;
                    let mut recall = Recall::default();
                    let mut values = Vec::new();
                    for (i, r) in batch.iter().enumerate().skip(from) {
                        let key = fast.key_of(&cache, r);
                        let complete = fast
                            .decode_values(&cache, r, prepared, &key, &mut recall, &mut values)
                            .unwrap();
                        if !complete {
                            missed = Some(i);
                            break;
                        }
                        let identity = Identity(
                            fast.parts(&key)
                                .unwrap()
                                .iter()
                                .map(|p| p.to_string())
                                .collect(),
                        );
                        let values = values.iter().map(ValueRef::to_value).collect();
                        got.insert(key.into_owned(), (identity, values));
                    }
                    let Some(i) = missed else {
                        break;
                    };
                    assert!(!prepared, "{table}: a prepared batch still misses");
                    fast.prepare(&mut c, &mut cache, &plan, &schema, batch)
                        .await
                        .unwrap();
                    prepared = true;
                    retried += 1;
                    from = i;
                }
            }
            assert_eq!(got, want, "{table}");
            tables += 1;
        }
        (tables, retried)
    });
    eprintln!("{tables} tables equal; {retried} batches prepared after a miss");
    assert!(
        tables > 30 && retried > 10,
        "{tables} tables, {retried} retried"
    );
}
