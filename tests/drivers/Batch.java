// pgjdbc batches, each sent without a Sync between its statements:
//   java -cp postgresql.jar Batch.java PORT ok    50 PreparedStatement INSERTs, then 5
//                                                 Statement DELETEs of different texts, one transaction
//   java -cp postgresql.jar Batch.java PORT fail  5 INSERTs, the third a duplicate key: rolled back
//   java -cp postgresql.jar Batch.java PORT fetch every row of items, 20 at a time (a portal
//                                                 suspended and resumed), in a transaction
// Prints the update counts (or the SQLSTATE of the failure, or the rows fetched), then "done".
import java.sql.*;
import java.util.Arrays;

public class Batch {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/postgres?user=postgres";
        try (Connection c = DriverManager.getConnection(url)) {
            c.setAutoCommit(false);
            if (args[1].equals("ok")) {
                try (PreparedStatement p = c.prepareStatement("insert into items (id, v) values (?, ?)")) {
                    for (int i = 1; i <= 50; i++) {
                        p.setInt(1, i);
                        p.setString(2, "item " + i);
                        p.addBatch();
                    }
                    System.out.println(Arrays.stream(p.executeBatch()).sum());
                }
                try (Statement s = c.createStatement()) {
                    // Texts alike in their first 32 bytes: each still its own statement.
                    for (int i = 1; i <= 5; i++) {
                        s.addBatch("delete from items where id between " + (i * 10) + " and " + (i * 10));
                    }
                    System.out.println(Arrays.stream(s.executeBatch()).sum());
                }
                c.commit();
            } else if (args[1].equals("fetch")) {
                try (Statement s = c.createStatement()) {
                    s.setFetchSize(20);
                    int n = 0;
                    try (ResultSet r = s.executeQuery("select id from items order by id")) {
                        while (r.next()) n++;
                    }
                    System.out.println(n);
                }
                c.commit();
            } else {
                try (PreparedStatement p = c.prepareStatement("insert into items (id, v) values (?, ?)")) {
                    for (int id : new int[] {101, 102, 1, 103, 104}) {
                        p.setInt(1, id);
                        p.setString(2, "again");
                        p.addBatch();
                    }
                    p.executeBatch();
                    System.out.println("no error");
                } catch (BatchUpdateException e) {
                    System.out.println(((SQLException) e.getNextException()).getSQLState());
                }
                c.rollback();
            }
        }
        System.out.println("done");
    }
}
