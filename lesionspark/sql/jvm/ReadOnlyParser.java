package lesionspark.guard;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.SparkSessionExtensions;
import org.apache.spark.sql.catalyst.FunctionIdentifier;
import org.apache.spark.sql.catalyst.TableIdentifier;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.parser.ParseException;
import org.apache.spark.sql.catalyst.parser.ParserInterface;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.StructType;
import scala.collection.Seq;
import scala.runtime.AbstractFunction1;
import scala.runtime.AbstractFunction2;
import scala.runtime.BoxedUnit;

/**
 * The SQL parser of `lesionspark serve`'s Spark session (spark.sql.extensions=lesionspark.guard.ReadOnlyParser$Extension):
 * Spark's own parser, with every statement's parsed plan shown to a guard before it runs. The guard is
 * lesionspark's read-only check (lesionspark/sql/query.py, `refusal`), installed from Python through
 * Py4J; until it is installed, every statement is refused. Runs in the server's driver JVM.
 */
public final class ReadOnlyParser implements ParserInterface {
    /** Implemented in Python: null to run the statement, else why it is refused. */
    public interface Guard {
        String refusal(LogicalPlan plan);
    }

    private static volatile Guard guard;

    public static void install(Guard g) {
        guard = g;
    }

    /** Loaded by Spark from spark.sql.extensions: wraps the session's parser. */
    public static final class Extension extends AbstractFunction1<SparkSessionExtensions, BoxedUnit> {
        @Override
        public BoxedUnit apply(SparkSessionExtensions extensions) {
            extensions.injectParser(new AbstractFunction2<SparkSession, ParserInterface, ParserInterface>() {
                @Override
                public ParserInterface apply(SparkSession session, ParserInterface parser) {
                    return new ReadOnlyParser(parser);
                }
            });
            return BoxedUnit.UNIT;
        }
    }

    private final ParserInterface delegate;

    public ReadOnlyParser(ParserInterface delegate) {
        this.delegate = delegate;
    }

    private LogicalPlan checked(LogicalPlan plan) {
        Guard g = guard;
        String why = g == null ? "the read-only guard is not installed yet" : g.refusal(plan);
        if (why != null) {
            throw new SecurityException("lesionspark serve is read-only: " + why);
        }
        return plan;
    }

    @Override
    public LogicalPlan parsePlan(String sqlText) throws ParseException {
        return checked(delegate.parsePlan(sqlText));
    }

    @Override
    public LogicalPlan parseQuery(String sqlText) throws ParseException {
        return checked(delegate.parseQuery(sqlText));
    }

    @Override
    public Expression parseExpression(String sqlText) throws ParseException {
        return delegate.parseExpression(sqlText);
    }

    @Override
    public TableIdentifier parseTableIdentifier(String sqlText) throws ParseException {
        return delegate.parseTableIdentifier(sqlText);
    }

    @Override
    public FunctionIdentifier parseFunctionIdentifier(String sqlText) throws ParseException {
        return delegate.parseFunctionIdentifier(sqlText);
    }

    @Override
    public Seq<String> parseMultipartIdentifier(String sqlText) throws ParseException {
        return delegate.parseMultipartIdentifier(sqlText);
    }

    @Override
    public StructType parseTableSchema(String sqlText) throws ParseException {
        return delegate.parseTableSchema(sqlText);
    }

    @Override
    public DataType parseDataType(String sqlText) throws ParseException {
        return delegate.parseDataType(sqlText);
    }
}
