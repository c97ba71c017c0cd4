namespace TrainDemoModel;

internal static class Report
{
    public static Task WriteAsync(TrainingSettings settings) => Task.CompletedTask;
}
