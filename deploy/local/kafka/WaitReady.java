// Waits until the local Kafka broker answers metadata requests: deploy/local/kafka.sh start
// compiles it into <state>/kafka/tools (or runs it as a single-file source program without
// javac) against the broker's own kafka-clients jar, so that it needs nothing else.
//
//   WaitReady <bootstrap> <seconds>
//
// Exit 0 once the cluster lists at least one (unfenced) broker and topics can be listed, exit 1
// when <seconds> pass first.
import java.time.Duration;
import java.util.Collection;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.Node;

public class WaitReady {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.CLIENT_ID_CONFIG, "act-local-wait-ready");
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, "200");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, "200");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "1000");
        String last = "no answer";
        Admin admin = Admin.create(props);
        try {
            long left;
            while ((left = deadline - System.nanoTime()) > 0) {
                long wait = Math.min(left, TimeUnit.SECONDS.toNanos(5));
                try {
                    Collection<Node> nodes =
                            admin.describeCluster().nodes().get(wait, TimeUnit.NANOSECONDS);
                    if (!nodes.isEmpty()) {
                        int topics = admin.listTopics().names().get(wait, TimeUnit.NANOSECONDS).size();
                        System.out.println("ready: brokers " + nodes + ", " + topics + " topics");
                        return;
                    }
                    last = "no broker registered yet";
                } catch (Exception e) {
                    last = e.toString();
                }
                Thread.sleep(300);
            }
        } finally {
            admin.close(Duration.ofSeconds(1));
        }
        System.err.println("not ready after " + args[1] + " s: " + last);
        System.exit(1);
    }
}
