-- Parallel queries with workers forced: the workers repeat the leader's text
-- and must not export spans, errors included.
create table par as select g, g % 7 as m from generate_series(1, 200000) g;
analyze par;
set parallel_setup_cost = 0;
set parallel_tuple_cost = 0;
set min_parallel_table_scan_size = 0;
set max_parallel_workers_per_gather = 2;
select count(*) from par;
select m, count(*) from par group by m order by m;
select count(*) from par where g / (g - 150000) > 10;
select sum(g) from par where m = 3;
explain (analyze, costs off, timing off, summary off) select count(*) from par;
