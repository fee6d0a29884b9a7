// A JDBC client for tests/test_tls.py: connects with the URL given, runs a prepared statement
// (server-side after the first executions) and prints what the proxy answered, one line each.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.util.Properties;

public class TlsClient {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        props.setProperty("prepareThreshold", "1");
        try (Connection conn = DriverManager.getConnection(args[0], props);
             PreparedStatement st = conn.prepareStatement("SELECT ?::int + 1")) {
            for (int i = 0; i < 5; i++) {
                st.setInt(1, 41 + i);
                try (ResultSet rs = st.executeQuery()) {
                    rs.next();
                    System.out.println(rs.getInt(1));
                }
            }
        }
    }
}
