// The judge prompts of the official evaluation code, word for word (typos, missing spaces and trailing spaces
// included): the judge's verdicts, and so the scores, depend on the exact text. From `evaluation/benchmarks/` of
// DAMO-NLP-SG/VideoLLaMA3: activitynet_qa.py (check_template), tempcompass.py (caption_evaluation_prompt), chartqa.py
// (build_prompt). Kept as one string per line so that no whitespace is lost to an editor.
import type { ChatMessage } from './types.js';

const ACTIVITYNET_SYSTEM = [
  'You are an intelligent chatbot designed for evaluating the correctness of generative outputs for question-answer pairs. Your task is to compare the predicted answer with the correct answer and determine if they match meaningfully. Here\'s how you can accomplish the task:------##INSTRUCTIONS: - Focus on the meaningful match between the predicted answer and the correct answer.',
  '- Consider synonyms or paraphrases as valid matches.',
  '- Evaluate the correctness of the prediction compared to the answer.',
].join('\n');

const ACTIVITYNET_USER = [
  'Please evaluate the following video-based question-answer pair:\n\nQuestion: ',
  '\nCorrect Answer: ',
  '\nPredicted Answer: ',
  '\n\n' +
    'Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and 5, with 5 indicating the highest meaningful match. Please generate the response in the form of a Python dictionary string with keys \'pred\' and \'score\', where value of \'pred\' is  a string of \'yes\' or \'no\' and value of \'score\' is in INTEGER, not STRING.DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. For example, your response should look like this: {\'pred\': \'yes\', \'score\': 4.8}.',
] as const;

/** ActivityNet-QA: question, reference answer and the model's answer, for a Python-dict verdict `{'pred': 'yes', 'score': 4}`. */
export function activitynetJudgeMessages(question: string, answer: string, prediction: string): ChatMessage[] {
  const [before, beforeAnswer, beforePrediction, after] = ACTIVITYNET_USER;
  return [
    { role: 'system', content: ACTIVITYNET_SYSTEM },
    { role: 'user', content: `${before}${question}${beforeAnswer}${answer}${beforePrediction}${prediction}${after}` },
  ];
}

/** TempCompass captioning: the instructions and three worked examples, before the model's caption and the question. */
const CAPTION_EVALUATION_PROMPT = [
  '',
  'You will receive a video description and a multi-choice question. Your task is to choose the correct answer and briefly explain the reason why you choose the answer. If none of the choice candidates are correct or the video description lacks enough information to answer the question, just answer "None". Please organize your response in this format:',
  '```',
  'Reasoning: [Your reason to obtain the answer]',
  'Answer: [Your answer]',
  '```',
  '',
  'Here are some examples of video description, multi-choice question and the expected answer:',
  '```',
  'Video Description: A person is palying football.',
  'Multi-Choice Question:',
  'What is the person doing in the video?',
  'Information A: {\'subject\': \'person\', \'action\': \'cooking\'}',
  'Information B: {\'subject\': \'person\', \'action\': \'palying football\'} ',
  'Information C: {\'subject\': \'person\', \'action\': \'playing basketball\'} ',
  'Information D: {\'subject\': \'person\', \'action\': \'reading book\'} ',
  'Reasoning: The video description mentions that the person is playing football.',
  'Answer: B',
  '',
  'Video Description: A bird is flying clockwise.',
  'Multi-Choice Question:',
  'In which direction is the bird flying?',
  'Information A: {\'subject\': \'bird\', \'action\': \'backwark\'}',
  'Information B: {\'subject\': \'bird\', \'action\': \'counter-clockwise\'}',
  'Information C: {\'subject\': \'bird\', \'action\': \'clockwise\'}',
  'Information D: {\'subject\': \'bird\', \'action\': \'downward\'}',
  'Reasoning: The video description mentions that the bird is flying clockwise',
  'Answer: C',
  '',
  'Video Description: An air balloon is inflating.',
  'Multi-Choice Question:',
  'What is happening to the air balloon?',
  'Information A: {\'subject\': \'air ballon\', \'action\': \'exploding\'}',
  'Information B: {\'subject\': \'air ballon\', \'action\': \'getting smaller\'}',
  'Information C: {\'subject\': \'air ballon\', \'action\': \'flying\'}',
  'Reasoning: The video description mentions that the air balloon is inflating, while none of the coices can be explained as inflating.',
  'Answer: None',
  '```',
  '',
].join('\n');

/** TempCompass captioning: the judge picks the option the caption supports (`Answer: B`, or `Answer: None`). */
export function captionJudgeMessages(caption: string, question: string): ChatMessage[] {
  return [
    { role: 'system', content: 'You are an AI assistant for question answering.' },
    { role: 'user', content: `${CAPTION_EVALUATION_PROMPT}\nVideo Description: ${caption}\nMulti-Choice Question:\n${question}\n` },
  ];
}

const CHARTQA_EXAMPLES = [
  'You are an AI assistant. Help me determine whether my answer is correct compared to the ground truth.Note that answers that are not exactly the same but have the same meaning or accurately answer the question should still be considered correct.Please output according to the specified template.Output template: True means correct, False means incorrect. Only output True or False.',
  'Example 1: ',
  'Question: Which colored bar trumps all the bars?, Ground Truth: Dark Blue, Answer: Blue, Your output: False',
  'Example 2: ',
  'Question: Which two values are same in the upper graph?, Ground Truth: [77, 77], Answer: 77, Your output: True',
  'Example 3: ',
  'Question: What\'s the age strucutre in 2019 for 0-14 and 15-64?, Ground Truth: [42.47, 54.91], Answer: 42.47, Your output: False',
  'Example 4: ',
  'Question: Which animal has the least cost of keeping?, Ground Truth: Rabbit**, Answer: Rabbit, Your output: True',
  'Example 5: ',
  'Question: How many years has number of visitor below 1000?, Ground Truth: 3, Answer: 2, Your output: False',
  'Example 6: ',
  'Question: Does the graph increase or decrease?, Ground Truth: increasing, Answer: Increase, Your output: True',
  'Question: ',
].join('\n');

/** ChartQA: whether an answer that differs from the reference as text means the same (`True` / `False`). */
export function chartqaJudgeMessages(question: string, reference: string, prediction: string): ChatMessage[] {
  return [{ role: 'user', content: `${CHARTQA_EXAMPLES}${question}, Ground Truth: ${reference}, Answer: ${prediction}, Your output: ` }];
}
