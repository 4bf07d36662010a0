import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

/** A real HDFS (NameNode + DataNodes) for the tests: prints its URI, then serves until stdin closes. */
public class MiniDfs {
    public static void main(String[] args) throws Exception {
        File base = new File(args.length > 0 ? args[0] : "minidfs");
        int dataNodes = args.length > 1 ? Integer.parseInt(args[1]) : 1;
        Configuration conf = new Configuration();
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, base.getAbsolutePath());
        conf.set("dfs.blocksize", "1048576");
        conf.set("dfs.namenode.fs-limits.min-block-size", "4096");
        conf.set("dfs.permissions.enabled", "true");
        conf.set("dfs.replication", "1");
        MiniDFSCluster dfs = new MiniDFSCluster.Builder(conf).nameNodePort(0).nameNodeHttpPort(0)
            .numDataNodes(dataNodes).build();
        dfs.waitActive();
        System.out.println("READY hdfs://127.0.0.1:" + dfs.getNameNodePort());
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        while (in.readLine() != null) { }
        dfs.shutdown();
    }
}
