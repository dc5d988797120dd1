class FewShotPrompting:
    def __init__(self):
        pass

    def format_prompt(self, task_input, task_output):
        pass

    def stop_words(self):
        pass
