-- Prepared transactions end their block as prepared; SQL-level PREPARE/EXECUTE.
create table px (id int primary key, v text);
begin;
insert into px values (1, 'a');
prepare transaction 'dbtel_px_1';
begin;
insert into px values (2, 'b');
prepare transaction 'dbtel_px_2';
commit prepared 'dbtel_px_1';
rollback prepared 'dbtel_px_2';
commit prepared 'dbtel_no_such_gid';
begin;
insert into px values (1, 'dup');
commit;
prepare ins (int, text) as insert into px values ($1, $2);
execute ins(3, 'c');
execute ins(3, 'dup');
deallocate ins;
select count(*) from px;
