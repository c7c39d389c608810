/*
 * Test vectors: the subpartitions Apache Flink gives each producer subtask's result partition and
 * the partition/subpartition ranges each consumer subtask reads, for one JobEdge, computed by
 * Flink's own classes (run by ci/oracle/subpartition_ranges.sh against flink-dist).
 *
 * For every (producer parallelism P, consumer parallelism C) in 1..MAX x 1..MAX and every edge
 * kind (POINTWISE, ALL_TO_ALL, ALL_TO_ALL with isBroadcast) this program
 *   1. builds a real JobGraph: two JobVertex, consumer.connectNewDataSetAsInput(producer, pattern,
 *      PIPELINED_BOUNDED, id, isBroadcast, isForward=false), JobGraphBuilder.newStreamingJobGraphBuilder();
 *   2. builds a real, non-dynamic DefaultExecutionGraph from it with
 *      DefaultExecutionGraphBuilder.buildGraph(..., isDynamicGraph=false, ...), i.e. what the
 *      streaming scheduler does (attachJobGraph -> initializeJobVertex ->
 *      VertexInputInfoComputationUtils.computeVertexInputInfos + EdgeManagerBuildUtil.connectVertexToResult);
 *   3. reads back, per producer subtask, IntermediateResultPartition#getNumberOfSubpartitions and its
 *      ConsumerVertexGroup, and per consumer subtask its ExecutionVertexInputInfo;
 *   4. cross-checks (exit status 1 on any mismatch): PartitionDescriptor.from(partition) (what the
 *      TaskManager's ResultPartitionFactory gets) has the same number of subpartitions; the
 *      consumer's ConsumedPartitionGroup holds exactly the partitions of its partition range, in
 *      order; ConsumedSubpartitionContext.buildConsumedSubpartitionContext (what
 *      TaskDeploymentDescriptorFactory puts in the InputGateDeploymentDescriptor) gives the same
 *      subpartition range for every consumed shuffle descriptor; and calling
 *      VertexInputInfoComputationUtils.computeVertexInputInfoForPointwise / ForAllToAll directly
 *      (isDynamicGraph=false) gives an equal JobVertexInputInfo.
 * Everything here is our harness; every number written comes from Flink's objects.
 *
 * Usage: java -cp <this>:<flink lib>/* SubpartitionRanges OUT.json [MAX_PARALLELISM]
 */

import org.apache.flink.api.common.JobID;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.runtime.blob.VoidBlobWriter;
import org.apache.flink.runtime.checkpoint.CheckpointsCleaner;
import org.apache.flink.runtime.checkpoint.NoOpCheckpointStatsTracker;
import org.apache.flink.runtime.checkpoint.StandaloneCheckpointIDCounter;
import org.apache.flink.runtime.checkpoint.StandaloneCompletedCheckpointStore;
import org.apache.flink.runtime.deployment.TaskDeploymentDescriptorFactory;
import org.apache.flink.runtime.execution.Environment;
import org.apache.flink.runtime.executiongraph.DefaultExecutionGraph;
import org.apache.flink.runtime.executiongraph.DefaultExecutionGraphBuilder;
import org.apache.flink.runtime.executiongraph.DefaultVertexAttemptNumberStore;
import org.apache.flink.runtime.executiongraph.ExecutionJobVertex;
import org.apache.flink.runtime.executiongraph.ExecutionVertex;
import org.apache.flink.runtime.executiongraph.ExecutionVertexInputInfo;
import org.apache.flink.runtime.executiongraph.IndexRange;
import org.apache.flink.runtime.executiongraph.IntermediateResult;
import org.apache.flink.runtime.executiongraph.IntermediateResultPartition;
import org.apache.flink.runtime.executiongraph.JobVertexInputInfo;
import org.apache.flink.runtime.executiongraph.NoOpExecutionDeploymentListener;
import org.apache.flink.runtime.executiongraph.VertexInputInfoComputationUtils;
import org.apache.flink.runtime.io.network.partition.JobMasterPartitionTrackerImpl;
import org.apache.flink.runtime.io.network.partition.ResultPartitionType;
import org.apache.flink.runtime.jobgraph.DistributionPattern;
import org.apache.flink.runtime.jobgraph.IntermediateDataSetID;
import org.apache.flink.runtime.jobgraph.IntermediateResultPartitionID;
import org.apache.flink.runtime.jobgraph.JobGraph;
import org.apache.flink.runtime.jobgraph.JobGraphBuilder;
import org.apache.flink.runtime.jobgraph.JobVertex;
import org.apache.flink.runtime.jobgraph.tasks.AbstractInvokable;
import org.apache.flink.runtime.metrics.groups.JobManagerJobMetricGroup;
import org.apache.flink.runtime.metrics.groups.UnregisteredMetricGroups;
import org.apache.flink.runtime.scheduler.SchedulerBase;
import org.apache.flink.runtime.scheduler.adaptivebatch.NonAdaptiveExecutionPlanSchedulingContext;
import org.apache.flink.runtime.scheduler.strategy.ConsumedPartitionGroup;
import org.apache.flink.runtime.scheduler.strategy.ConsumerVertexGroup;
import org.apache.flink.runtime.scheduler.strategy.ExecutionVertexID;
import org.apache.flink.runtime.shuffle.NettyShuffleMaster;
import org.apache.flink.runtime.shuffle.PartitionDescriptor;
import org.apache.flink.runtime.shuffle.ShuffleMasterContextImpl;
import org.apache.flink.runtime.util.EnvironmentInformation;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.lang.reflect.Method;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.function.Function;

public final class SubpartitionRanges {

    private static final Logger LOG = LoggerFactory.getLogger(SubpartitionRanges.class);

    /** The job vertices need an invokable class name; nothing is ever invoked. */
    public static final class NoOpInvokable extends AbstractInvokable {
        public NoOpInvokable(Environment environment) {
            super(environment);
        }

        @Override
        public void invoke() {}
    }

    /** One edge kind: the distribution pattern and JobEdge's isBroadcast flag. */
    private enum Kind {
        POINTWISE(DistributionPattern.POINTWISE, false),
        ALL_TO_ALL(DistributionPattern.ALL_TO_ALL, false),
        ALL_TO_ALL_BROADCAST(DistributionPattern.ALL_TO_ALL, true);

        final DistributionPattern pattern;
        final boolean broadcast;

        Kind(DistributionPattern pattern, boolean broadcast) {
            this.pattern = pattern;
            this.broadcast = broadcast;
        }
    }

    private static final ResultPartitionType RESULT_TYPE = ResultPartitionType.PIPELINED_BOUNDED;

    private static int failures = 0;

    private static void check(boolean ok, String what) {
        if (!ok) {
            failures++;
            System.err.println("CHECK FAILED: " + what);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            System.err.println("usage: SubpartitionRanges OUT.json [MAX_PARALLELISM]");
            System.exit(64);
        }
        Path out = Paths.get(args[0]);
        int max = args.length > 1 ? Integer.parseInt(args[1]) : 8;

        // package-private in Flink: reached by reflection (used only for the cross-check)
        Class<?> ctxClass = Class.forName("org.apache.flink.runtime.deployment.ConsumedSubpartitionContext");
        Method buildCtx = ctxClass.getDeclaredMethod(
                "buildConsumedSubpartitionContext", Map.class, ConsumedPartitionGroup.class, Function.class);
        Method ctxRanges = ctxClass.getDeclaredMethod("getConsumedShuffleDescriptorRanges");
        Method ctxSubRange = ctxClass.getDeclaredMethod("getConsumedSubpartitionRange", int.class);
        Method ctxCount = ctxClass.getDeclaredMethod("getNumConsumedShuffleDescriptors");
        for (Method m : new Method[] {buildCtx, ctxRanges, ctxSubRange, ctxCount}) {
            m.setAccessible(true);
        }

        String version = EnvironmentInformation.getVersion();
        StringBuilder sb = new StringBuilder();
        sb.append("{\n");
        sb.append("  \"name\": \"subpartition_ranges\",\n");
        sb.append("  \"generator\": \"ci/oracle/SubpartitionRanges.java (run by ci/oracle/subpartition_ranges.sh)\",\n");
        sb.append("  \"flink_version\": ").append(q(version)).append(",\n");
        sb.append("  \"flink_classes\": \"flink-dist-").append(version)
                .append(".jar: JobGraph/JobVertex.connectNewDataSetAsInput -> DefaultExecutionGraphBuilder.buildGraph(isDynamicGraph=false)\",\n");
        sb.append("  \"result_partition_type\": ").append(q(RESULT_TYPE.name())).append(",\n");
        sb.append("  \"max_parallelism\": ").append(max).append(",\n");
        sb.append("  \"kinds\": [");
        Kind[] kinds = Kind.values();
        for (int k = 0; k < kinds.length; k++) {
            sb.append(k == 0 ? "" : ", ").append(q(kinds[k].name()));
        }
        sb.append("],\n");
        sb.append("  \"fields\": {\n");
        sb.append("    \"kind\": \"POINTWISE | ALL_TO_ALL | ALL_TO_ALL_BROADCAST (ALL_TO_ALL with JobEdge isBroadcast=true)\",\n");
        sb.append("    \"producers\": \"P, the producer vertex's parallelism (= number of result partitions, one per producer subtask)\",\n");
        sb.append("    \"consumers\": \"C, the consumer vertex's parallelism\",\n");
        sb.append("    \"num_subpartitions\": \"[p] = IntermediateResultPartition#getNumberOfSubpartitions of producer subtask p's partition\",\n");
        sb.append("    \"partition_consumers\": \"[p] = consumer subtask indices of that partition's ConsumerVertexGroup, in order\",\n");
        sb.append("    \"inputs\": \"[i] = consumer subtask i's ExecutionVertexInputInfo: partitions = [first, last] producer partition index (inclusive), subpartitions = [first, last] subpartition index (inclusive) read from each of them\",\n");
        sb.append("    \"refused\": \"present instead of the three lists if Flink refused to build the edge: exception class and message\"\n");
        sb.append("  },\n");
        sb.append("  \"edges\": [\n");

        ScheduledExecutorService executor = Executors.newSingleThreadScheduledExecutor();
        NettyShuffleMaster shuffleMaster =
                new NettyShuffleMaster(new ShuffleMasterContextImpl(new Configuration(), t -> {
                    throw new IllegalStateException("fatal error in shuffle master", t);
                }));
        boolean first = true;
        int edges = 0;
        int refused = 0;
        try {
            for (Kind kind : kinds) {
                for (int p = 1; p <= max; p++) {
                    for (int c = 1; c <= max; c++) {
                        String line = edge(kind, p, c, executor, shuffleMaster, buildCtx, ctxRanges, ctxSubRange, ctxCount);
                        if (line.contains("\"refused\"")) {
                            refused++;
                        }
                        sb.append(first ? "    " : ",\n    ").append(line);
                        first = false;
                        edges++;
                    }
                }
            }
        } finally {
            executor.shutdownNow();
            shuffleMaster.close();
        }
        sb.append("\n  ]\n}\n");

        if (failures > 0) {
            System.err.println(failures + " cross-check(s) failed; nothing written");
            System.exit(1);
        }
        Files.createDirectories(out.toAbsolutePath().getParent());
        Files.write(out, sb.toString().getBytes(StandardCharsets.UTF_8));
        System.err.println("wrote " + out + ": " + edges + " edges (" + refused + " refused), Flink " + version);
    }

    private static String edge(
            Kind kind, int p, int c, ScheduledExecutorService executor, NettyShuffleMaster shuffleMaster,
            Method buildCtx, Method ctxRanges, Method ctxSubRange, Method ctxCount) throws Exception {
        JobVertex producer = new JobVertex("producer");
        producer.setInvokableClass(NoOpInvokable.class);
        producer.setParallelism(p);
        JobVertex consumer = new JobVertex("consumer");
        consumer.setInvokableClass(NoOpInvokable.class);
        consumer.setParallelism(c);
        IntermediateDataSetID dataSetId = new IntermediateDataSetID();
        consumer.connectNewDataSetAsInput(producer, kind.pattern, RESULT_TYPE, dataSetId, kind.broadcast, false);

        JobGraph jobGraph = JobGraphBuilder.newStreamingJobGraphBuilder()
                .setJobName("subpartition-ranges-" + kind + "-" + p + "x" + c)
                .addJobVertex(producer)
                .addJobVertex(consumer)
                .build();
        DefaultExecutionGraph graph;
        try {
            graph = build(jobGraph, executor, shuffleMaster);
        } catch (Exception e) {
            // Flink refused to build this edge (none does in 2.3): record it as such
            return "{\"kind\": " + q(kind.name()) + ", \"producers\": " + p + ", \"consumers\": " + c
                    + ", \"refused\": " + q(e.getClass().getName() + ": " + e.getMessage()) + "}";
        }
        check(!graph.isDynamic(), "graph is not dynamic");

        IntermediateResult result = graph.getAllIntermediateResults().get(dataSetId);
        IntermediateResultPartition[] partitions = result.getPartitions();
        check(partitions.length == p, kind + " " + p + "x" + c + ": " + partitions.length + " partitions");
        check(result.isBroadcast() == kind.broadcast, "isBroadcast flag");
        check(result.getConsumingDistributionPattern() == kind.pattern, "distribution pattern");
        String where = kind + " P=" + p + " C=" + c;

        // per producer subtask
        List<Integer> numSubpartitions = new ArrayList<>();
        List<List<Integer>> partitionConsumers = new ArrayList<>();
        for (int i = 0; i < p; i++) {
            IntermediateResultPartition partition = partitions[i];
            check(partition.getPartitionNumber() == i, where + ": partition number");
            check(partition.getProducer().getParallelSubtaskIndex() == i, where + ": producer subtask");
            int n = partition.getNumberOfSubpartitions();
            check(PartitionDescriptor.from(partition).getNumberOfSubpartitions() == n,
                    where + ": PartitionDescriptor disagrees for partition " + i);
            List<ConsumerVertexGroup> groups = partition.getConsumerVertexGroups();
            check(groups.size() == 1, where + ": partition " + i + " has " + groups.size() + " consumer vertex groups");
            List<Integer> consumers = new ArrayList<>();
            for (ExecutionVertexID id : groups.get(0)) {
                check(id.getJobVertexId().equals(consumer.getID()), where + ": consumer vertex id");
                consumers.add(id.getSubtaskIndex());
            }
            numSubpartitions.add(n);
            partitionConsumers.add(consumers);
        }

        // per consumer subtask
        ExecutionJobVertex consumerEjv = graph.getJobVertex(consumer.getID());
        ExecutionVertex[] consumerVertices = consumerEjv.getTaskVertices();
        check(consumerVertices.length == c, where + ": consumer subtasks");
        JobVertexInputInfo jobVertexInputInfo = graph.getJobVertexInputInfo(consumer.getID(), dataSetId);
        List<String> inputs = new ArrayList<>();
        for (int j = 0; j < c; j++) {
            ExecutionVertex ev = consumerVertices[j];
            ExecutionVertexInputInfo info = ev.getExecutionVertexInputInfo(dataSetId);
            check(info.getSubtaskIndex() == j, where + ": subtask index of input info " + j);
            check(jobVertexInputInfo.getExecutionVertexInputInfos().get(j).equals(info),
                    where + ": JobVertexInputInfo order");
            Map<IndexRange, IndexRange> groups = info.getConsumedSubpartitionGroups();
            check(groups.size() == 1, where + ": consumer " + j + " has " + groups.size() + " consumed subpartition groups");
            Map.Entry<IndexRange, IndexRange> entry = groups.entrySet().iterator().next();
            IndexRange partitionRange = entry.getKey();
            IndexRange subpartitionRange = entry.getValue();

            List<ConsumedPartitionGroup> consumed = ev.getAllConsumedPartitionGroups();
            check(consumed.size() == 1, where + ": consumer " + j + " has " + consumed.size() + " consumed partition groups");
            ConsumedPartitionGroup group = consumed.get(0);
            List<Integer> groupPartitions = new ArrayList<>();
            for (IntermediateResultPartitionID id : group) {
                groupPartitions.add(id.getPartitionNumber());
            }
            List<Integer> expected = new ArrayList<>();
            for (int i = partitionRange.getStartIndex(); i <= partitionRange.getEndIndex(); i++) {
                expected.add(i);
            }
            check(groupPartitions.equals(expected),
                    where + ": consumer " + j + " ConsumedPartitionGroup " + groupPartitions + " vs " + partitionRange);

            // what the InputGateDeploymentDescriptor would carry (TaskDeploymentDescriptorFactory)
            Object ctx = buildCtx.invoke(null, groups, group,
                    (Function<Integer, IntermediateResultPartitionID>) idx -> partitions[idx].getPartitionId());
            int descriptors = (Integer) ctxCount.invoke(ctx);
            check(descriptors == partitionRange.size(), where + ": consumer " + j + " shuffle descriptors " + descriptors);
            @SuppressWarnings("unchecked")
            Collection<IndexRange> descriptorRanges = (Collection<IndexRange>) ctxRanges.invoke(ctx);
            for (IndexRange r : descriptorRanges) {
                for (int d = r.getStartIndex(); d <= r.getEndIndex(); d++) {
                    check(ctxSubRange.invoke(ctx, d).equals(subpartitionRange),
                            where + ": consumer " + j + " gate subpartition range of descriptor " + d);
                }
            }

            inputs.add("{\"partitions\": " + range(partitionRange) + ", \"subpartitions\": " + range(subpartitionRange) + "}");
        }

        // the utility methods called directly give the same input infos
        JobVertexInputInfo direct = kind.pattern == DistributionPattern.POINTWISE
                ? VertexInputInfoComputationUtils.computeVertexInputInfoForPointwise(
                        p, c, idx -> partitions[idx].getNumberOfSubpartitions(), false)
                : VertexInputInfoComputationUtils.computeVertexInputInfoForAllToAll(
                        p, c, idx -> partitions[idx].getNumberOfSubpartitions(), false, kind.broadcast, false);
        check(direct.equals(jobVertexInputInfo), where + ": direct computeVertexInputInfoFor* differs from the graph's");

        return "{\"kind\": " + q(kind.name()) + ", \"producers\": " + p + ", \"consumers\": " + c
                + ", \"num_subpartitions\": " + numSubpartitions
                + ", \"partition_consumers\": " + partitionConsumers
                + ", \"inputs\": [" + String.join(", ", inputs) + "]}";
    }

    /** As Flink's TestingDefaultExecutionGraphBuilder#build(false, executor) does. */
    private static DefaultExecutionGraph build(
            JobGraph jobGraph, ScheduledExecutorService executor, NettyShuffleMaster shuffleMaster) throws Exception {
        JobManagerJobMetricGroup metricGroup = UnregisteredMetricGroups.createUnregisteredJobManagerJobMetricGroup();
        JobID jobId = jobGraph.getJobID();
        return DefaultExecutionGraphBuilder.buildGraph(
                jobGraph,
                new Configuration(),
                executor,
                executor,
                SubpartitionRanges.class.getClassLoader(),
                new StandaloneCompletedCheckpointStore(1),
                new CheckpointsCleaner(),
                new StandaloneCheckpointIDCounter(),
                Duration.ofSeconds(10),
                VoidBlobWriter.getInstance(),
                LOG,
                shuffleMaster,
                new JobMasterPartitionTrackerImpl(jobId, shuffleMaster, resourceId -> Optional.empty()),
                TaskDeploymentDescriptorFactory.PartitionLocationConstraint.fromJobType(jobGraph.getJobType()),
                NoOpExecutionDeploymentListener.get(),
                (execution, previousState, newState) -> {},
                0L,
                new DefaultVertexAttemptNumberStore(),
                SchedulerBase.computeVertexParallelismStore(jobGraph),
                NoOpCheckpointStatsTracker.INSTANCE,
                false, // isDynamicGraph: the streaming (non-adaptive) scheduler's graph
                new ExecutionJobVertex.Factory(),
                ResultPartitionType::isBlockingOrBlockingPersistentResultPartition,
                false,
                metricGroup,
                NonAdaptiveExecutionPlanSchedulingContext.INSTANCE);
    }

    private static String range(IndexRange r) {
        return "[" + r.getStartIndex() + ", " + r.getEndIndex() + "]";
    }

    private static String q(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            switch (ch) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (ch < 0x20) {
                        b.append(String.format("\\u%04x", (int) ch));
                    } else {
                        b.append(ch);
                    }
            }
        }
        return b.append('"').toString();
    }

    private SubpartitionRanges() {}
}
