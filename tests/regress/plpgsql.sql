-- PL/pgSQL errors: caught ones fail nothing, uncaught ones fail their statement.
create table audit (id int primary key, note text);
create function risky(n int) returns int language plpgsql as $$
begin
  if n < 0 then
    raise exception 'negative: %', n using errcode = 'P0001';
  end if;
  return 100 / n;
end $$;
create function careful(n int) returns text language plpgsql as $$
begin
  perform risky(n);
  return 'ok';
exception when division_by_zero then
  insert into audit values (n + 1000, 'caught');
  return 'caught';
end $$;
select careful(0);
select careful(5);
select risky(-1);
select risky(0);
do $$ begin raise exception using errcode = '22023', message = 'bad setting-ish'; end $$;
do $$ declare x int; begin select id into strict x from audit where id < 0; end $$;
do $$ begin assert 1 = 2, 'assertion'; end $$;
do $$ begin begin perform 1/0; exception when others then null; end; end $$;
select careful(0) from generate_series(1, 3);
insert into audit values (1, 'one'), (2, 'two');
do $$ declare x int; begin select id into strict x from audit; end $$;
