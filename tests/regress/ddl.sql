-- DDL and name lookups on objects that do not exist; settings with bad values.
create table present (id int primary key, v text);
comment on index no_such_index is 'x';
vacuum present, does_not_exist;
select 'no_such_table'::regclass;
drop table no_such_table;
alter table present add column v text;
create index on present (no_such_column);
set work_mem = 'lots';
set statement_timeout = -5;
set no_such.setting_name = 1;
select pg_read_file('/nonexistent/dbtel/file');
copy present from '/nonexistent/dbtel/file';
select * from present where id = 'abc';
select 1 |> 2;
select U&'d\0061t\+000061' as u1, U&'d!0061t' UESCAPE '!' as u2, E'tab\there' as e;
