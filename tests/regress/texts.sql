-- Operators, strings and shapes the obfuscation must keep as written.
select 1 != 2, 3 <> 4, 'a' || 'b', 5 >= 6;
select box '((0,0),(1,1))' <<| box '((0,2),(1,3))', point '(1,1)' <-> point '(2,2)';
select '{"a": 1}'::jsonb ->> 'a', '{"a": {"b": 2}}'::jsonb #> '{a,b}', '{1,2}'::int[] @> '{1}';
select 'abc' ~~ 'a%', 'ABC' !~~* 'x%', 0x1F + 0o17 + 0b101 + 1_000;
(select 1) union (select 2);
select $tag$dollar 'quoted'$tag$, $$plain$$;
select 1 /* inline comment */ + 2;
select 'it''s', e'\\n';
insert into t_long values ('LONGLITERAL');
